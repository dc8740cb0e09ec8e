"""pyrt for asyncio: the same API, every method that can block a coroutine.

No thread per container: a container's exit is awaited through its pidfd with
``loop.add_reader``, its pipes are read and written by the event loop, and only the spawn itself
(a few milliseconds of syscalls, GIL released) runs in the loop's default executor.

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
from typing import IO, Any, Optional, TypeVar, Union

from . import _core, checks, readiness
from .container import Container as _SyncContainer
from .container import Input, PathArg, _io_args, _result
from .container_readiness import POLL_INTERVAL
from .errors import ContainerError, PyrtError, TimeoutExpired
from .image import Image
from .pool import Pool as _SyncPool
from .results import Result, Stats
from .stdio import Pipes, Target

__all__ = ["Container", "Pool", "run"]

T = TypeVar("T")


async def _exited(proc: _core.Process, timeout: Optional[float]) -> Optional[int]:
    """The return code once the process has exited, or None if ``timeout`` passed first."""
    code = proc.wait(0)
    if code is not None:
        return code
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    fd = proc.pidfd

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
    return proc.wait(0)


async def _communicate(
    in_w: int, data: Optional[bytes], out_r: int, err_r: int, timeout: Optional[float]
) -> tuple[bytes, bytes, bool]:
    """Writes ``data`` to ``in_w`` (then closes it) and reads both outputs to EOF, on the event
    loop. Returns (stdout, stderr, timed_out); the descriptors for reading stay the caller's."""
    loop = asyncio.get_running_loop()
    bufs: dict[int, bytearray] = {fd: bytearray() for fd in (out_r, err_r) if fd >= 0}
    eof: dict[int, asyncio.Future[None]] = {fd: loop.create_future() for fd in bufs}
    for fd in (*bufs, *([in_w] if in_w >= 0 else [])):
        os.set_blocking(fd, False)

    def readable(fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            bufs[fd] += chunk
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
        _, pending = await asyncio.wait(list(eof.values()), timeout=timeout)
        empty = bytearray()
        return bytes(bufs.get(out_r, empty)), bytes(bufs.get(err_r, empty)), bool(pending)
    finally:
        for fd in bufs:
            loop.remove_reader(fd)
        close_stdin()


class Container:
    """``pyrt.Container`` for asyncio; options as there."""

    def __init__(self, image: Image, command: Optional[Sequence[str]] = None, **options: Any):
        self._c = _SyncContainer(image, command, **options)

    @classmethod
    def _of(cls, c: _SyncContainer) -> Container:
        """The asyncio face of an existing container (one a pool handed out)."""
        self = cls.__new__(cls)
        self._c = c
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

    def __repr__(self) -> str:
        return f"<pyrt.aio.Container {self.name or self.id[:12]} {self.status}>"

    # --- life -----------------------------------------------------------------------------

    async def start(self) -> Container:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._c.start)
        return self

    async def _io(
        self,
        spawn: Any,
        p: Pipes,
        timeout: Optional[float],
        drain_after_kill: Optional[float],
        args: list[str],
    ) -> tuple[_core.Process, Optional[bytes], Optional[bytes], int]:
        """As the sync ``Container._run_io``, on the event loop."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        proc: Optional[_core.Process] = None
        try:
            try:
                proc = await loop.run_in_executor(None, spawn, *p.child)
            finally:
                p.started()
            assert proc is not None
            out, err, timed_out = await _communicate(
                p.take_stdin(), p.input, p.out_r, p.err_r, timeout
            )
            left = None if deadline is None else max(0.0, deadline - loop.time())
            code = None if timed_out else await _exited(proc, left)
            if code is None:
                proc.kill(signal.SIGKILL)
                more_out, more_err, _ = await _communicate(
                    -1, None, p.out_r, p.err_r, drain_after_kill
                )
                await _exited(proc, None)
                raise TimeoutExpired(args, timeout or 0, out + more_out, err + more_err)
            cap_out, cap_err = p.captured
            return proc, out if cap_out else None, err if cap_err else None, code
        except BaseException:
            # A started process is always waited for (its zombie would hold the container).
            if proc is not None and proc.wait(0) is None:
                proc.kill(signal.SIGKILL)
                await loop.run_in_executor(None, proc.wait)
            raise
        finally:
            p.close()

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
        data, timeout, check, text = _io_args(input, timeout, check, text)
        c = self._c

        def spawn(i: int, o: int, e: int) -> _core.Process:
            c._spawn(i, o, e)
            assert c._proc is not None
            return c._proc

        try:
            proc, out, err, code = await self._io(
                spawn, Pipes(data, stdout, stderr), timeout, None, c.args
            )
            c._returncode = code
            oom = proc.oom_kills() > 0
        finally:
            await self.remove()
        return _result(c.args, code, out, err, text, check, oom)

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
        data, timeout, check, text = _io_args(input, timeout, check, text)
        args = checks.args(command, "command")
        spawn = self._c._exec_starter(args, env, user, workdir)
        p = Pipes(data, stdout, stderr)
        _, out, err, code = await self._io(spawn, p, timeout, 0.2, args)
        return _result(args, code, out, err, text, check, False)

    async def wait(self, timeout: Optional[float] = None) -> int:
        """The return code; on timeout TimeoutExpired, and the container keeps running."""
        timeout = checks.timeout(timeout)
        c = self._c
        if c._returncode is not None:
            return c._returncode
        if c._proc is None:
            raise PyrtError(f"container {self.id[:12]} was not started")
        code = await _exited(c._proc, timeout)
        if code is None:
            raise TimeoutExpired(c.args, timeout or 0)
        c._returncode = code
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self._c.kill(sig)

    async def stop(self, timeout: float = 10) -> int:
        self.kill(self._c.stop_signal)
        try:
            return await self.wait(timeout)
        except TimeoutExpired:
            self.kill(signal.SIGKILL)
            return await self.wait()

    async def remove(self) -> None:
        c = self._c
        if c._proc is not None and c._returncode is None and not c._removed:
            c.kill(signal.SIGKILL)
            await self.wait()
        # What is left (cgroup and directory removal) is quick file work once it has exited.
        await asyncio.get_running_loop().run_in_executor(None, c.remove)

    async def stats(self) -> Stats:
        return self._c.stats()

    async def logs(self) -> bytes:
        return self._c.logs()

    async def follow_logs(self) -> AsyncIterator[bytes]:
        """What the container writes, as it writes it, until it has exited and all is read."""
        d = self._c._dir
        if d is None:
            return
        with open(d.log, "rb") as f:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    yield chunk
                    continue
                if not self._c._alive():
                    await asyncio.get_running_loop().run_in_executor(None, self._c._logs_flushed)
                    rest = f.read()
                    if rest:
                        yield rest
                    return
                await asyncio.sleep(POLL_INTERVAL)

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

    # --- readiness --------------------------------------------------------------------------

    async def _poll(self, what: str, timeout: float, check: Any) -> Any:
        loop = asyncio.get_running_loop()
        t = checks.timeout(timeout)
        if t is None:
            raise TypeError("timeout must be a number of seconds, not None")
        deadline = loop.time() + t
        while True:
            got = await check()
            if got:
                return got
            if not self._c._alive():
                raise ContainerError(self._c.wait(), self._c.args, self._c.logs(), waiting_for=what)
            if loop.time() > deadline:
                raise TimeoutExpired(self._c.args, timeout)
            await asyncio.sleep(POLL_INTERVAL)

    async def wait_for_log(
        self, pattern: readiness.Pattern, timeout: float = 30
    ) -> re.Match[bytes]:
        rx = readiness.compile_pattern(pattern)

        async def check() -> Optional[re.Match[bytes]]:
            return rx.search(self._c.logs())

        m: re.Match[bytes] = await self._poll(f"log pattern {rx.pattern!r}", timeout, check)
        return m

    async def wait_for_command(
        self, command: Sequence[str], timeout: float = 30, **exec_options: Any
    ) -> Result:
        async def check() -> Union[Result, bool]:
            r = await self.exec(command, **exec_options)
            return r.returncode == 0 and r

        res: Result = await self._poll(f"{list(command)!r} to succeed", timeout, check)
        return res

    async def wait_for_file(self, path: str, timeout: float = 30) -> None:
        path = checks.container_path(path, "path")
        readiness.check_path(path)

        async def check() -> bool:
            return readiness.file_exists(self.pid or 0, path)

        await self._poll(f"file {path}", timeout, check)

    async def wait_for_port(self, port: int, timeout: float = 30) -> None:
        port = checks.whole(port, "port", 1, 65535)
        loop = asyncio.get_running_loop()

        async def check() -> bool:
            return await loop.run_in_executor(None, readiness.port_accepts, self.pid or 0, port)

        await self._poll(f"TCP port {port}", timeout, check)

    async def wait_for_http(
        self, port: int, path: str = "/", status: int = 200, timeout: float = 60.0
    ) -> None:
        what, check = self._c._http_check(port, path, status)
        loop = asyncio.get_running_loop()

        async def probe() -> bool:
            return await loop.run_in_executor(None, check)

        await self._poll(what, timeout, probe)

    async def wait_for_healthy(self, timeout: float = 60.0) -> None:
        check = self._c._healthy_check()

        async def probe() -> bool:
            return check()

        await self._poll("the healthcheck to pass", timeout, probe)

    @property
    def health(self) -> Optional[str]:
        return self._c.health

    @property
    def ip(self) -> Optional[str]:
        return self._c.ip

    async def __aenter__(self) -> Container:
        if self._c._proc is None:
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

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: Optional[float] = None) -> AsyncIterator[Container]:
        """As ``pyrt.Pool.acquire``: an ``aio.Container``, reset for the next caller after."""
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
