"""pyrt for asyncio: the same API, every method that can block a coroutine.

The operations are those of ``pyrt.Container``, written once as steps (``pyrt.lifecycle``);
here they are driven on the event loop. No thread per container: a container's exit is awaited
through its pidfd with ``loop.add_reader``, its pipes are read and written by the event loop,
and only blocking calls (a spawn: a few milliseconds of syscalls, GIL released; a connection
attempt; file work) run in the loop's default executor.

    async with pyrt.aio.Container(img, ["sleep", "60"]) as c:
        res = await c.exec(["echo", "hi"])
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Optional, TypeVar, Union

from pyrt import _core
from pyrt.container import lifecycle, probes
from pyrt.container.container import Container as _SyncContainer
from pyrt.container.container import PathArg
from pyrt.container.lifecycle import Steps
from pyrt.container.pool import Pool as _SyncPool
from pyrt.container.results import Result, Stats
from pyrt.container.stdio import Target
from pyrt.container.steps import Input, steps_of
from pyrt.image import Image

__all__ = ["Container", "Pool", "run"]

T = TypeVar("T")


async def _exited(proc: _core.Process, timeout: Optional[float]) -> Optional[int]:
    """The return code once the process has exited, or None if ``timeout`` passed first."""
    code = proc.wait(0)
    if code is not None:
        return code
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    try:
        # Our own copy: the process's is closed when another thread reaps it meanwhile.
        fd = proc.dup_pidfd()
    except ProcessLookupError:
        return proc.wait(0)

    def exited() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, exited)
    try:
        await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait(0)


async def _communicate(req: lifecycle.Communicate) -> tuple[bytes, bytes, bool, Optional[str]]:
    """Writes the request's input to its stdin (then closes it) and reads both outputs to EOF
    or past its limit, on the event loop. Answers as ``lifecycle.Communicate`` says; the
    descriptors for reading stay the caller's."""
    in_w, data, out_r, err_r, limit = req.stdin, req.data, req.stdout, req.stderr, req.limit
    loop = asyncio.get_running_loop()
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in (out_r, err_r) if fd >= 0}
    eof: dict[int, asyncio.Future[None]] = {fd: loop.create_future() for fd in bufs}
    over: list[str] = []  # (the stream that passed the limit: every wait ends with it)
    for fd in (*bufs, *([in_w] if in_w >= 0 else [])):
        os.set_blocking(fd, False)

    def readable(fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            bufs[fd] += chunk
            if limit is not None and len(bufs[fd]) > limit:
                del bufs[fd][limit:]
                over.append("stdout" if fd == out_r else "stderr")
                for f in bufs:
                    loop.remove_reader(f)
                    if not eof[f].done():
                        eof[f].set_result(None)
        else:
            loop.remove_reader(fd)
            if not eof[fd].done():
                eof[fd].set_result(None)

    for fd in bufs:
        loop.add_reader(fd, readable, fd)
    view = memoryview(data or b"")
    writing = in_w >= 0

    def close_stdin() -> None:
        nonlocal writing
        if writing:
            loop.remove_writer(in_w)
            os.close(in_w)
            writing = False

    def writable() -> None:
        nonlocal view
        try:
            n = os.write(in_w, view[: 1 << 16])
            view = view[n:]
        except BlockingIOError:
            return
        except BrokenPipeError:
            view = view[:0]
        if not view:
            close_stdin()

    if writing:
        if view:
            loop.add_writer(in_w, writable)
        else:
            close_stdin()
    try:
        _, pending = await asyncio.wait(list(eof.values()), timeout=req.timeout)
        empty = bytearray()
        got = bytes(bufs.get(out_r, empty)), bytes(bufs.get(err_r, empty))
        return (*got, bool(pending), over[0] if over else None)
    finally:
        for fd in bufs:
            loop.remove_reader(fd)
        close_stdin()


async def _answer(loop: asyncio.AbstractEventLoop, req: lifecycle.Request) -> Any:
    """What a request asks for, done on the event loop."""
    if isinstance(req, lifecycle.Communicate):
        return await _communicate(req)
    if isinstance(req, lifecycle.Exited):
        return await _exited(req.proc, req.timeout)
    if isinstance(req, lifecycle.Sleep):
        await asyncio.sleep(req.seconds)
        return None
    if isinstance(req, lifecycle.Blocking):
        return await asyncio.get_running_loop().run_in_executor(None, req.fn)
    raise TypeError(f"a {type(req).__name__} is not answered here")


@dataclass(frozen=True)
class _Done:
    value: Any


def _resume(steps: Steps[Any], got: Any = None, exc: Optional[BaseException] = None) -> Any:
    """``steps``' next request after ``got`` (or ``exc``), or _Done with its value. (A
    StopIteration may not leave a coroutine: it is turned into a value here.)"""
    try:
        return steps.throw(exc) if exc is not None else steps.send(got)
    except StopIteration as stop:
        return _Done(stop.value)


async def _step(steps: Steps[Any], req: lifecycle.Request) -> Any:
    """Answers ``req`` and hands the answer (or the exception) to ``steps``: its next request,
    or _Done."""
    loop = asyncio.get_running_loop()
    if not isinstance(req, lifecycle.Blocking):
        try:
            got = await _answer(loop, req)
        except BaseException as e:
            return _resume(steps, exc=e)
        return _resume(steps, got)
    call = loop.run_in_executor(None, req.fn)
    try:
        got = await asyncio.shield(call)
    except asyncio.CancelledError as cancel:
        # The call goes on in its thread (a spawn cannot be stopped half way): wait for it,
        # hand what it made to the steps, which own it (they kill and wait for a process they
        # started), and then the cancellation.
        while not call.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([call])
        made = not call.cancelled() and call.exception() is None
        if made and isinstance(_resume(steps, call.result()), _Done):
            raise
        return _resume(steps, exc=cancel)
    except BaseException as e:
        return _resume(steps, exc=e)
    return _resume(steps, got)


async def drive(steps: Steps[T]) -> T:
    """Runs ``steps`` to its end on the running event loop and returns its value."""
    req = _resume(steps)
    while not isinstance(req, _Done):
        req = await _step(steps, req)
    value: T = req.value
    return value


async def drive_chunks(steps: Steps[None]) -> AsyncIterator[bytes]:
    """Runs ``steps`` on the event loop, yielding the data of its ``Chunk`` requests."""
    try:
        req = _resume(steps)
        while not isinstance(req, _Done):
            if isinstance(req, lifecycle.Chunk):
                yield req.data
                req = _resume(steps)
            else:
                req = await _step(steps, req)
    finally:
        steps.close()


class Container:
    """``pyrt.Container`` for asyncio; options as there."""

    def __init__(self, image: Image, command: Optional[Sequence[str]] = None, **options: Any):
        self._c = _SyncContainer(image, command, **options)
        self._steps = steps_of(self._c)

    @classmethod
    def _of(cls, c: _SyncContainer) -> Container:
        """The asyncio face of an existing container (one a pool handed out)."""
        self = cls.__new__(cls)
        self._c = c
        self._steps = steps_of(c)
        return self

    # --- identity -------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._c.id

    @property
    def name(self) -> Optional[str]:
        return self._c.name

    @property
    def pid(self) -> Optional[int]:
        return self._c.pid

    @property
    def status(self) -> str:
        return self._c.status

    @property
    def health(self) -> Optional[str]:
        return self._c.health

    @property
    def ip(self) -> Optional[str]:
        return self._c.ip

    def __repr__(self) -> str:
        return f"<pyrt.aio.Container {self.name or self.id[:12]} {self.status}>"

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> Container:
        await self._off_loop(self._c.start)
        return self

    async def run(
        self,
        input: Input = None,
        timeout: Optional[float] = None,
        check: bool = False,
        text: bool = False,
        *,
        stdout: Target = None,
        stderr: Target = None,
    ) -> Result:
        """Runs to completion and removes the container; ``timeout`` kills all of it."""
        return await drive(self._steps.run(input, timeout, check, text, stdout, stderr))

    async def exec(
        self,
        command: Sequence[str],
        input: Input = None,
        timeout: Optional[float] = None,
        check: bool = False,
        text: bool = False,
        *,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        workdir: Optional[str] = None,
        stdout: Target = None,
        stderr: Target = None,
    ) -> Result:
        """As ``Container.exec``: ``timeout`` kills only this process."""
        return await drive(
            self._steps.exec(command, input, timeout, check, text,
                             env=env, user=user, workdir=workdir, stdout=stdout, stderr=stderr)
        )  # fmt: skip

    async def wait(self, timeout: Optional[float] = None) -> int:
        """The return code; on timeout TimeoutExpired, and the container keeps running."""
        return await drive(self._steps.wait(timeout))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._c.kill(sig)

    async def stop(self, timeout: float = 10) -> int:
        return await drive(self._steps.stop(timeout))

    async def remove(self) -> None:
        await drive(self._steps.remove())

    async def stats(self) -> Stats:
        return self._c.stats()

    async def logs(self) -> bytes:
        return self._c.logs()

    def follow_logs(self, timeout: Optional[float] = None) -> AsyncIterator[bytes]:
        """What the container writes, as it writes it, until it has exited and all is read
        (or ``timeout`` seconds pass: TimeoutExpired)."""
        return drive_chunks(self._steps.follow_logs(timeout))

    # --- files and snapshots (file work, run off the event loop) ------------------------------

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def write_file(self, path: PathArg, data: Union[bytes, str], mode: int = 0o644) -> None:
        await self._off_loop(self._c.write_file, path, data, mode)

    async def read_file(self, path: PathArg) -> bytes:
        return await self._off_loop(self._c.read_file, path)

    async def copy_in(self, src: PathArg, dst: PathArg) -> None:
        await self._off_loop(self._c.copy_in, src, dst)

    async def copy_out(self, src: PathArg, dst: PathArg) -> list[str]:
        return await self._off_loop(self._c.copy_out, src, dst)

    async def put_archive(self, path: PathArg, data: Union[bytes, IO[bytes]]) -> None:
        await self._off_loop(self._c.put_archive, path, data)

    async def get_archive(self, path: PathArg) -> bytes:
        return await self._off_loop(self._c.get_archive, path)

    async def commit(self, tag: Optional[str] = None, **changes: Any) -> Image:
        """As ``Container.commit``."""
        return await self._off_loop(self._c.commit, tag, **changes)

    async def reset(self) -> Container:
        await self._off_loop(self._c.reset)
        return self

    # --- readiness (as Container's: the same steps) ---------------------------------------------

    async def wait_for_log(self, pattern: probes.Pattern, timeout: float = 30) -> re.Match[bytes]:
        return await drive(self._steps.wait_for_log(pattern, timeout))

    async def wait_for_command(
        self, command: Sequence[str], timeout: float = 30, **exec_options: Any
    ) -> Result:
        return await drive(self._steps.wait_for_command(command, timeout, exec_options))

    async def wait_for_file(self, path: str, timeout: float = 30) -> None:
        await drive(self._steps.wait_for_file(path, timeout))

    async def wait_for_port(self, port: int, timeout: float = 30) -> None:
        await drive(self._steps.wait_for_port(port, timeout))

    async def wait_for_http(
        self, port: int, path: str = "/", status: int = 200, timeout: float = 60.0
    ) -> None:
        await drive(self._steps.wait_for_http(port, path, status, timeout))

    async def wait_for_healthy(self, timeout: float = 60.0) -> None:
        await drive(self._steps.wait_for_healthy(timeout))

    async def __aenter__(self) -> Container:
        if self._c.pid is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.remove()


class Pool:
    """``pyrt.Pool`` for asyncio: the waits and the closing run off the event loop.

    async with pyrt.aio.Pool(img, ["sleep", "3600"], size=4) as pool:
        async with pool.acquire() as c:
            await c.exec(["true"])
    """

    def __init__(
        self, image: Image, command: Optional[Sequence[str]] = None, size: int = 4, **options: Any
    ):
        self._pool = _SyncPool(image, command, size, **options)

    def __repr__(self) -> str:
        return repr(self._pool).replace("pyrt.Pool", "pyrt.aio.Pool", 1)

    def acquire(
        self, timeout: Optional[float] = None
    ) -> contextlib.AbstractAsyncContextManager[Container]:
        """As ``pyrt.Pool.acquire``: an ``aio.Container``, reset for the next caller after (a
        wrong ``timeout`` or a closed pool raises at the call)."""
        self._pool.check_usable(timeout)
        return self._acquired(timeout)

    @contextlib.asynccontextmanager
    async def _acquired(self, timeout: Optional[float]) -> AsyncIterator[Container]:
        loop = asyncio.get_running_loop()
        taking = loop.run_in_executor(None, self._pool.take, timeout)
        try:
            c = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The wait goes on in its thread: what it takes goes back, not astray.
            taking.add_done_callback(self._give_back_taken)
            raise
        try:
            yield Container._of(c)
        finally:
            self._pool.give_back(c)

    def _give_back_taken(self, taking: asyncio.Future[_SyncContainer]) -> None:
        if not taking.cancelled() and taking.exception() is None:
            self._pool.give_back(taking.result())

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.close)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def run(
    image: Image,
    command: Optional[Sequence[str]] = None,
    input: Input = None,
    timeout: Optional[float] = None,
    check: bool = False,
    text: bool = False,
    *,
    stdout: Target = None,
    stderr: Target = None,
    **options: Any,
) -> Result:
    """``pyrt.run`` for asyncio."""
    return await Container(image, command, **options).run(
        input=input, timeout=timeout, check=check, text=text, stdout=stdout, stderr=stderr
    )
