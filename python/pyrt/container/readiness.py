"""Readiness: the ``wait_for_*`` operations (logs, a command, a file, a TCP port, HTTP, the
healthcheck). Each polls its check, fails at once with ``ContainerError`` when the container
exits, and raises ``TimeoutExpired`` (the container left running) on timeout.

``ReadinessSteps`` writes each wait once, as steps (``lifecycle``); ``ContainerReadiness`` is
``pyrt.Container``'s face of them, driven in the caller's thread (``pyrt.aio`` drives the same
steps on its event loop)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyrt.config import checks
from pyrt.container import lifecycle, probes
from pyrt.container.lifecycle import Steps, at_once, off_loop
from pyrt.container.results import Result
from pyrt.errors import InvalidOption

if TYPE_CHECKING:
    import socket

    from pyrt.container.steps import ContainerSteps


class ReadinessSteps:
    """The waits as steps (a base class of ``steps.ContainerSteps``)."""

    if TYPE_CHECKING:

        def poll(
            self, what: str, timeout: object, check: Callable[[], Steps[Any]]
        ) -> Steps[Any]: ...
        def exec(self, command: Sequence[str], *args: Any, **kwargs: Any) -> Steps[Result]: ...
        def logs(self) -> bytes: ...
        def probe_pid(self) -> int: ...
        def connector(self, port: int) -> Callable[[], socket.socket]: ...
        def healthy(self) -> Callable[[], bool]: ...

    def wait_for_log(self, pattern: probes.Pattern, timeout: object) -> Steps[re.Match[bytes]]:
        rx = probes.compile_pattern(pattern)
        check = at_once(lambda: rx.search(self.logs()))
        m: re.Match[bytes] = yield from self.poll(f"log pattern {rx.pattern!r}", timeout, check)
        return m

    def wait_for_command(
        self, command: Sequence[str], timeout: object, exec_options: dict[str, Any]
    ) -> Steps[Result]:
        def check() -> Steps[Any]:
            r = yield from self.exec(command, **exec_options)
            return r.returncode == 0 and r

        res: Result = yield from self.poll(f"{list(command)!r} to succeed", timeout, check)
        return res

    def wait_for_file(self, path: str, timeout: object) -> Steps[None]:
        path = checks.container_path(path, "path")
        probes.check_path(path)
        check = at_once(lambda: probes.file_exists(self.probe_pid(), path))
        yield from self.poll(f"file {path}", timeout, check)

    def wait_for_port(self, port: int, timeout: object) -> Steps[None]:
        port = checks.whole(port, "port", 1, 65535)
        check = off_loop(lambda: probes.port_accepts(self.probe_pid(), port))
        yield from self.poll(f"TCP port {port}", timeout, check)

    def wait_for_http(self, port: int, path: str, status: int, timeout: object) -> Steps[None]:
        port = checks.whole(port, "port", 1, 65535)
        path = checks.text(path, "path")
        if not path.startswith("/") or any(ch in path for ch in " \r\n"):
            raise InvalidOption(f"path={path!r}: an absolute URL path (starting with '/')")
        status = checks.whole(status, "status", 100, 599)
        connect = self.connector(port)
        # (Each probe blocks up to 2 s.)
        check = off_loop(lambda: probes.http_status(connect, path, 2.0) == status)
        yield from self.poll(f"HTTP {status} from port {port} {path}", timeout, check)

    def wait_for_healthy(self, timeout: object) -> Steps[None]:
        yield from self.poll("the healthcheck to pass", timeout, at_once(self.healthy()))


class ContainerReadiness:
    """The readiness methods of ``pyrt.Container`` (a base class of it)."""

    if TYPE_CHECKING:

        @property
        def _steps(self) -> ContainerSteps: ...

    def wait_for_log(self, pattern: probes.Pattern, timeout: float = 30) -> re.Match[bytes]:
        """Waits until the logs match ``pattern`` (a regex); returns the match."""
        return lifecycle.drive(self._steps.wait_for_log(pattern, timeout))

    def wait_for_command(
        self, command: Sequence[str], timeout: float = 30, **exec_options: Any
    ) -> Result:
        """Waits until ``command``, exec'd inside, exits with status 0; returns its result."""
        return lifecycle.drive(self._steps.wait_for_command(command, timeout, exec_options))

    def wait_for_file(self, path: str, timeout: float = 30) -> None:
        """Waits until ``path`` exists inside the container (resolved inside its root)."""
        lifecycle.drive(self._steps.wait_for_file(path, timeout))

    def wait_for_port(self, port: int, timeout: float = 30) -> None:
        """Waits until a TCP connection to ``port`` on 127.0.0.1 inside the container's network
        namespace is accepted."""
        lifecycle.drive(self._steps.wait_for_port(port, timeout))

    def wait_for_http(
        self, port: int, path: str = "/", status: int = 200, timeout: float = 60.0
    ) -> None:
        """Waits until an HTTP GET of ``path`` on ``port`` answers ``status``: through the
        published host port when there is one, else inside the container's network namespace
        (root; a rootless container's needs the port published)."""
        lifecycle.drive(self._steps.wait_for_http(port, path, status, timeout))

    def wait_for_healthy(self, timeout: float = 60.0) -> None:
        """Waits until the healthcheck passes; ContainerError at once if the container exits,
        TimeoutExpired (the container keeps running) when ``timeout`` passes first."""
        lifecycle.drive(self._steps.wait_for_healthy(timeout))
