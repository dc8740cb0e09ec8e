"""A container's operations that wait, written once as steps (``lifecycle``): ``Container``
drives them in the caller's thread, ``pyrt.aio.Container`` on its event loop."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from pyrt import _core
from pyrt.config import checks
from pyrt.container import lifecycle
from pyrt.container.lifecycle import Steps
from pyrt.container.readiness import ReadinessSteps
from pyrt.container.results import Result
from pyrt.container.stdio import Pipes, Target
from pyrt.errors import ContainerError, PyrtError, TimeoutExpired

if TYPE_CHECKING:
    from pyrt.container.container import Container

Input = Union[bytes, str, None]


class ContainerSteps(ReadinessSteps):
    """One container's operations that wait, as steps (``lifecycle``): ``Container`` drives
    them in the caller's thread, ``pyrt.aio.Container`` on its event loop."""

    def __init__(self, c: Container) -> None:
        self._c = c

    def run(
        self,
        input: Input,
        timeout: object,
        check: object,
        text: object,
        stdout: Target,
        stderr: Target,
    ) -> Steps[Result]:
        c = self._c
        data, t, check, text = _io_args(input, timeout, check, text)
        if c._o.tty:
            raise PyrtError("tty=True is for start() and `pyrt run -it`; run() captures pipes")

        def start(i: int, o: int, e: int) -> _core.Process:
            c._spawn(i, o, e, scratch=True)
            assert c._proc is not None
            return c._proc

        try:
            io = Pipes(data, stdout, stderr)
            # Killing the first process ends the whole pid namespace: the drain ends at EOF.
            proc, out, err, code = yield from lifecycle.io(
                start, c.args, io, t, None, c._o.output_limit
            )
            c._returncode = code
            oom = proc.oom_kills() > 0
        finally:
            yield from self.remove()
        return _result(c.args, code, out, err, text, check, oom)

    def exec(
        self,
        command: Sequence[str],
        input: Input = None,
        timeout: object = None,
        check: object = False,
        text: object = False,
        *,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        workdir: Optional[str] = None,
        stdout: Target = None,
        stderr: Target = None,
    ) -> Steps[Result]:
        data, t, check, text = _io_args(input, timeout, check, text)
        args = checks.args(command, "command")
        start = self._c._exec_starter(args, env, user, workdir)
        io = Pipes(data, stdout, stderr)
        # After a kill, children of the exec'd process may hold its pipes: drain only briefly.
        _, out, err, code = yield from lifecycle.io(
            start, args, io, t, 0.2, self._c._o.output_limit
        )
        return _result(args, code, out, err, text, check, False)

    def wait(self, timeout: object) -> Steps[int]:
        c = self._c
        t = checks.timeout(timeout)
        if c._returncode is not None:
            return c._returncode
        if c._proc is None:
            raise PyrtError(f"container {c.id[:12]} was not started")
        code = yield lifecycle.Exited(c._proc, t)
        if code is None:
            raise TimeoutExpired(c.args, t or 0)
        c._returncode = code
        return int(code)

    def stop(self, timeout: object) -> Steps[int]:
        c = self._c
        grace = checks.timeout(timeout)
        if c._proc is None:
            raise PyrtError(f"container {c.id[:12]} was not started")
        c.kill(c.stop_signal)
        try:
            return (yield from self.wait(grace))
        except TimeoutExpired:
            c.kill(signal.SIGKILL)
            return (yield from self.wait(None))

    def remove(self) -> Steps[None]:
        c = self._c
        if c._proc is not None and c._returncode is None and not c._removed:
            # The wait is the part that takes time: outside the lock, and (pyrt.aio) on the
            # event loop; the teardown after it is quick file work.
            c.kill(signal.SIGKILL)
            yield lifecycle.Exited(c._proc, None)
        yield lifecycle.Blocking(c._teardown)

    def follow_logs(self, timeout: object) -> Steps[None]:
        c = self._c
        log = c._dir.log if c._dir is not None else None
        yield from lifecycle.follow(log, timeout, c._alive, c._logs_flushed, c.args)

    # --- what the readiness steps need -------------------------------------------------------

    def poll(self, what: str, timeout: object, check: Callable[[], Steps[Any]]) -> Steps[Any]:
        c = self._c

        def ended(what: str) -> BaseException:
            return ContainerError(c.wait(), c.args, c.logs(), waiting_for=what)

        return lifecycle.poll(what, timeout, check, c._alive, ended, c.args)

    def logs(self) -> bytes:
        return self._c.logs()

    def probe_pid(self) -> int:
        return self._c.pid or 0

    def healthy(self) -> Callable[[], bool]:
        c = self._c
        if c._healthcheck is None:
            raise PyrtError(
                f"container {c.id[:12]} has no healthcheck (give healthcheck=pyrt.Healthcheck"
                "(...), or use an image with a HEALTHCHECK)"
            )
        return lambda: c.health == "healthy"

    def connector(self, port: int) -> Callable[[], socket.socket]:
        """How to reach ``port`` of the container from here: its published host port, else
        its network namespace (root)."""
        c = self._c
        for p in c._net.published if c._net is not None else ():
            if p.container_port == port and p.proto == "tcp":
                addr = "127.0.0.1" if p.host_addr == "0.0.0.0" else p.host_addr
                return lambda: socket.create_connection((addr, p.host_port), 0.5)
        if c._userns is not None and os.geteuid() != 0:
            # Its namespace cannot be entered from here: a forward of slirp4netns's, made
            # once, to the container's address (its network's, or its private one's).
            if c._net is None:
                raise PyrtError(
                    f"wait_for_http({port}): a rootless container's network namespace cannot "
                    "be entered from the host, and this one has no network with a way in "
                    "(network='private' or a pyrt.Network)"
                )
            addr, hport = c._net.probe_port(port)
            return lambda: socket.create_connection((addr, hport), 0.5)
        net_path = c._net.path if c._net is not None else None

        def connect() -> socket.socket:
            path = net_path or f"/proc/{c.pid or 0}/ns/net"
            return socket.socket(fileno=_core.tcp_connect(path, port, 0.5))

        return connect


def steps_of(c: Container) -> ContainerSteps:
    """The steps behind ``c``'s waiting operations, for ``pyrt.aio`` to drive."""
    return ContainerSteps(c)


def _io_args(
    input: object, timeout: object, check: object, text: object
) -> tuple[Optional[bytes], Optional[float], bool, bool]:
    """The common arguments of run and exec, checked before anything is started."""
    return (
        checks.input_data(input),
        checks.timeout(timeout),
        checks.flag(check, "check"),
        checks.flag(text, "text"),
    )


def _decoded(data: Optional[bytes], text: bool) -> Union[bytes, str, None]:
    if data is None or not text:
        return data
    return data.decode("utf-8", "replace")


def _result(
    args: list[str],
    code: int,
    out: Optional[bytes],
    err: Optional[bytes],
    text: bool,
    check: bool,
    oom: bool,
) -> Result:
    res = Result(args, code, _decoded(out, text), _decoded(err, text), oom_killed=oom)
    if check:
        res.check_returncode()
    return res
