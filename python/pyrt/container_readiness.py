"""Readiness: the ``wait_for_*`` methods of ``pyrt.Container`` (logs, a command, a file, a TCP
port, HTTP, the healthcheck). Each polls its check, fails at once with ``ContainerError`` when
the container exits, and raises ``TimeoutExpired`` (the container left running) on timeout.
The checks themselves (``_http_check``, ``_healthy_check``) serve ``pyrt.aio`` too."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _core, checks, readiness
from .errors import ContainerError, InvalidOption, PyrtError, TimeoutExpired
from .results import Result

if TYPE_CHECKING:
    from .health import Healthcheck
    from .network import PrivateNetwork
    from .networks import Member
    from .userns import IdMaps

#: How often the wait_for_* helpers look again.
POLL_INTERVAL = 0.005


class ContainerReadiness:
    """The readiness methods of ``pyrt.Container`` (a base class of it)."""

    if TYPE_CHECKING:
        id: str
        args: list[str]
        _net: Optional[Union[PrivateNetwork, Member]]
        _userns: Optional[IdMaps]
        _healthcheck: Optional[Healthcheck]

        @property
        def pid(self) -> Optional[int]: ...
        @property
        def health(self) -> Optional[str]: ...
        def _alive(self) -> bool: ...
        def wait(self, timeout: Optional[float] = None) -> int: ...
        def logs(self) -> bytes: ...
        def exec(self, command: Sequence[str], *args: Any, **kwargs: Any) -> Result: ...

    def _poll(self, what: str, timeout: float, check: Callable[[], Any]) -> Any:
        t = checks.timeout(timeout, "timeout")
        if t is None:
            raise TypeError("timeout must be a number of seconds, not None")
        deadline = time.monotonic() + t
        while True:
            got = check()
            if got:
                return got
            if not self._alive():
                raise ContainerError(self.wait(), self.args, self.logs(), waiting_for=what)
            if time.monotonic() > deadline:
                raise TimeoutExpired(self.args, timeout)
            time.sleep(POLL_INTERVAL)

    def wait_for_log(self, pattern: readiness.Pattern, timeout: float = 30) -> re.Match[bytes]:
        """Waits until the logs match ``pattern`` (a regex); returns the match."""
        rx = readiness.compile_pattern(pattern)
        m: re.Match[bytes] = self._poll(
            f"log pattern {rx.pattern!r}", timeout, lambda: rx.search(self.logs())
        )
        return m

    def wait_for_command(
        self, command: Sequence[str], timeout: float = 30, **exec_options: Any
    ) -> Result:
        """Waits until ``command``, exec'd inside, exits with status 0; returns its result."""
        res: Result = self._poll(
            f"{list(command)!r} to succeed",
            timeout,
            lambda: (r := self.exec(command, **exec_options)).returncode == 0 and r,
        )
        return res

    def wait_for_file(self, path: str, timeout: float = 30) -> None:
        """Waits until ``path`` exists inside the container (resolved inside its root)."""
        path = checks.container_path(path, "path")
        readiness.check_path(path)
        self._poll(f"file {path}", timeout, lambda: readiness.file_exists(self.pid or 0, path))

    def wait_for_port(self, port: int, timeout: float = 30) -> None:
        """Waits until a TCP connection to ``port`` on 127.0.0.1 inside the container's network
        namespace is accepted."""
        port = checks.whole(port, "port", 1, 65535)
        self._poll(f"TCP port {port}", timeout, lambda: readiness.port_accepts(self.pid or 0, port))

    def wait_for_http(
        self, port: int, path: str = "/", status: int = 200, timeout: float = 60.0
    ) -> None:
        """Waits until an HTTP GET of ``path`` on ``port`` answers ``status``: through the
        published host port when there is one, else inside the container's network namespace
        (root; a rootless container's needs the port published)."""
        what, check = self._http_check(port, path, status)
        self._poll(what, timeout, check)

    def _http_check(self, port: int, path: str, status: int) -> tuple[str, Callable[[], bool]]:
        """What wait_for_http waits for, and the check (which blocks up to 2 s)."""
        port = checks.whole(port, "port", 1, 65535)
        path = checks.text(path, "path")
        if not path.startswith("/") or any(ch in path for ch in " \r\n"):
            raise InvalidOption(f"path={path!r}: an absolute URL path (starting with '/')")
        status = checks.whole(status, "status", 100, 599)
        connect = self._connector(port)
        return (f"HTTP {status} from port {port} {path}",
                lambda: readiness.http_status(connect, path, 2.0) == status)  # fmt: skip

    def _connector(self, port: int) -> Callable[[], socket.socket]:
        for p in self._net.published if self._net is not None else ():
            if p.container_port == port and p.proto == "tcp":
                addr = "127.0.0.1" if p.host_addr == "0.0.0.0" else p.host_addr
                return lambda: socket.create_connection((addr, p.host_port), 0.5)
        if self._userns is not None and os.geteuid() != 0:
            raise PyrtError(
                f"wait_for_http({port}): a rootless container's network namespace cannot be "
                "entered from the host; publish the port (ports={port: None})"
            )
        net_path = self._net.path if self._net is not None else None

        def connect() -> socket.socket:
            path = net_path or f"/proc/{self.pid or 0}/ns/net"
            return socket.socket(fileno=_core.tcp_connect(path, port, 0.5))

        return connect

    def wait_for_healthy(self, timeout: float = 60.0) -> None:
        """Waits until the healthcheck passes; ContainerError at once if the container exits,
        TimeoutExpired (the container keeps running) when ``timeout`` passes first."""
        self._poll("the healthcheck to pass", timeout, self._healthy_check())

    def _healthy_check(self) -> Callable[[], bool]:
        if self._healthcheck is None:
            raise PyrtError(
                f"container {self.id[:12]} has no healthcheck (give healthcheck=pyrt.Healthcheck"
                "(...), or use an image with a HEALTHCHECK)"
            )
        return lambda: self.health == "healthy"
