"""The waiting part of a container's life, written once and driven twice.

Every operation that waits (``run``, ``exec``, ``wait``, ``stop``, ``remove``,
``follow_logs``, the ``wait_for_*`` polls) is a generator of *steps*: it yields what it waits
for, as one of the requests below, and is sent the answer. ``drive`` answers in the caller's
thread, for ``pyrt.Container``; ``pyrt.aio`` answers the same requests on the event loop (a
pidfd and pipes watched by the loop, blocking calls in its executor). So the I/O loop, the
timeout and kill rules and the polls exist once, and the two fronts cannot drift apart
(the async ``follow_logs`` once lacked the sync one's ``timeout``).

An exception raised while answering is thrown into the generator at its ``yield``, so its
``try``/``finally`` blocks (which kill and wait for a process they started) run on both fronts.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

from pyrt import _core
from pyrt.config import checks
from pyrt.container.stdio import Pipes
from pyrt.errors import OutputLimitExceeded, TimeoutExpired

T = TypeVar("T")

#: How often the wait_for_* polls look again.
POLL_INTERVAL = 0.005


@dataclass(frozen=True)
class Blocking:
    """A call that may block (a spawn, a connection, a teardown): made as it is by ``drive``,
    in the event loop's executor by ``pyrt.aio``. Answer: what it returns."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Communicate:
    """Write ``data`` to ``stdin`` (then close it) and read ``stdout``/``stderr`` (-1: none) to
    EOF, for at most ``timeout`` seconds, keeping at most ``limit`` bytes of each. Answer:
    (out, err, timed_out, over_limit), the last the name of the stream that had more than
    ``limit`` ("stdout" or "stderr"; the reading stopped there) or None."""

    stdin: int
    data: Optional[bytes]
    stdout: int
    stderr: int
    timeout: Optional[float]
    limit: Optional[int] = None


@dataclass(frozen=True)
class Exited:
    """Wait up to ``timeout`` seconds (None: no limit) for ``proc`` to exit. Answer: its
    return code, or None if it still runs."""

    proc: _core.Process
    timeout: Optional[float]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Chunk:
    """Output for the consumer of a stream (``follow_logs``). Answer: None."""

    data: bytes


Request = Union[Blocking, Communicate, Exited, Sleep, Chunk]
#: A generator of requests that returns a T.
Steps = Generator[Request, Any, T]


# --- the synchronous driver ------------------------------------------------------------------


def answer(req: Request) -> Any:
    """What a request asks for, done in this thread."""
    if isinstance(req, Blocking):
        return req.fn()
    if isinstance(req, Communicate):
        return _core.communicate(
            req.stdin, req.data, req.stdout, req.stderr, req.timeout, req.limit
        )
    if isinstance(req, Exited):
        return req.proc.wait(req.timeout)
    if isinstance(req, Sleep):
        time.sleep(req.seconds)
        return None
    raise TypeError(f"a {type(req).__name__} is not answered here")


def step(steps: Steps[Any], req: Request) -> Request:
    """Answers ``req`` and hands the answer (or the exception raised) to ``steps``; returns
    its next request (StopIteration with its value at its end)."""
    try:
        got = answer(req)
    except BaseException as e:
        return steps.throw(e)
    return steps.send(got)


def drive(steps: Steps[T]) -> T:
    """Runs ``steps`` to its end in this thread and returns its value."""
    try:
        req = next(steps)
        while True:
            req = step(steps, req)
    except StopIteration as stop:
        value: T = stop.value
        return value


def drive_chunks(steps: Steps[None]) -> Iterator[bytes]:
    """Runs ``steps`` in this thread, yielding the data of its ``Chunk`` requests."""
    try:
        req = next(steps)
        while True:
            if isinstance(req, Chunk):
                yield req.data
                req = steps.send(None)
            else:
                req = step(steps, req)
    except StopIteration:
        return
    finally:
        steps.close()


# --- steps shared by the fronts ----------------------------------------------------------------


def at_once(fn: Callable[[], T]) -> Callable[[], Steps[T]]:
    """A check that does not block (a file read), as steps: called inline on both fronts."""

    def steps() -> Steps[T]:
        return fn()
        yield  # (a generator, that yields nothing)

    return steps


def off_loop(fn: Callable[[], T]) -> Callable[[], Steps[T]]:
    """A check that may block (a connection), as steps: off the event loop under pyrt.aio."""

    def steps() -> Steps[T]:
        got: T = yield Blocking(fn)
        return got

    return steps


def left(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


Started = tuple[_core.Process, Optional[bytes], Optional[bytes], int]


def io(
    start: Callable[[int, int, int], _core.Process],
    args: list[str],
    pipes: Pipes,
    timeout: Optional[float],
    drain_after_kill: Optional[float],
    limit: Optional[int] = None,
) -> Steps[Started]:
    """Starts a process on ``pipes``' descriptors, feeds its input, collects what it captures
    and waits: (process, stdout or None, stderr or None, return code). On ``timeout`` the
    process is killed (SIGKILL) and TimeoutExpired raised with what it wrote until then, read
    for ``drain_after_kill`` more seconds (None: to EOF). A captured stream with more than
    ``limit`` bytes gets it killed too, and OutputLimitExceeded raised: nothing is read
    further, so no process can fill the caller's memory. A process that was started is
    waited for whatever happens: a zombie of an exec'd process would keep its container's
    init from ever exiting."""
    deadline = None if timeout is None else time.monotonic() + timeout
    proc: Optional[_core.Process] = None
    try:
        try:
            proc = yield Blocking(lambda: start(*pipes.child))
        finally:
            pipes.started()
        assert proc is not None
        out, err, timed_out, over = yield Communicate(
            pipes.take_stdin(), pipes.input, pipes.out_r, pipes.err_r, timeout, limit
        )
        if over is not None:
            assert limit is not None
            proc.kill(signal.SIGKILL)
            yield Exited(proc, None)
            raise OutputLimitExceeded(args, over, limit, out, err)
        # With nothing captured, Communicate returns at once: the wait keeps the deadline.
        code = None if timed_out else (yield Exited(proc, left(deadline)))
        if code is None:
            proc.kill(signal.SIGKILL)
            more_out, more_err, _, _ = yield Communicate(
                -1, None, pipes.out_r, pipes.err_r, drain_after_kill, _room(limit, out, err)
            )
            yield Exited(proc, None)
            raise TimeoutExpired(args, timeout or 0, out + more_out, err + more_err)
        cap_out, cap_err = pipes.captured
        return proc, out if cap_out else None, err if cap_err else None, code
    except BaseException as e:
        if proc is not None and proc.wait(0) is None:
            proc.kill(signal.SIGKILL)
            if isinstance(e, GeneratorExit):
                proc.wait(None)  # (a closed generator may not yield again)
            else:
                yield Exited(proc, None)
        raise
    finally:
        pipes.close()


def _room(limit: Optional[int], out: bytes, err: bytes) -> Optional[int]:
    """What a drain after a kill may still read of each stream under ``limit``."""
    return None if limit is None else max(0, limit - max(len(out), len(err)))


def poll(
    what: str,
    timeout: object,
    check: Callable[[], Steps[Any]],
    alive: Callable[[], bool],
    ended: Callable[[str], BaseException],
    args: list[str],
) -> Steps[Any]:
    """Runs ``check`` every POLL_INTERVAL until it returns something true, which is returned.
    When the container is no longer ``alive``, ``ended(what)`` is raised at once; after
    ``timeout`` seconds TimeoutExpired (the container left running)."""
    t = checks.timeout(timeout, "timeout")
    if t is None:
        raise TypeError("timeout must be a number of seconds, not None")
    deadline = time.monotonic() + t
    while True:
        got = yield from check()
        if got:
            return got
        if not alive():
            raise ended(what)
        if time.monotonic() > deadline:
            raise TimeoutExpired(args, t, waiting_for=what)
        yield Sleep(POLL_INTERVAL)


def follow(
    log: Optional[Path],
    timeout: object,
    alive: Callable[[], bool],
    flushed: Callable[[], None],
    args: list[str],
) -> Steps[None]:
    """Hands out (as ``Chunk``s) what the container writes to ``log`` as it writes it, until it
    has exited and all is read, or ``timeout`` seconds pass (TimeoutExpired)."""
    t = checks.timeout(timeout)
    if log is None:
        return
    deadline = None if t is None else time.monotonic() + t
    with open(log, "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                yield Chunk(chunk)
                continue
            if not alive():
                # The log thread writes the last of the output a moment after the exit.
                yield Blocking(flushed)
                rest = f.read()
                if rest:
                    yield Chunk(rest)
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutExpired(args, t or 0)
            yield Sleep(POLL_INTERVAL)
