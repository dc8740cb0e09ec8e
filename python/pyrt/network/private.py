"""``network="private"``: a network namespace of the container's own with outbound access, DNS,
the host's loopback as ``host.pyrt.internal``, and published ports.

The user-mode stack is Debian's slirp4netns, not veth + NAT: it needs no firewall rules on the
host, behaves the same as root and (later) rootless, and dies with the Python process that
started it (its exit descriptor is a pipe only that process holds). It is attached to a
namespace that pyrt makes first (``_core.new_netns``), so the network is configured before the
container's command runs; the container joins it by path. A published TCP port is pyrt's own
forwarder (``core/portfwd.rs``): a host listener whose connections are opened from inside the
namespace, kernel sockets end to end, to the container's 127.0.0.1 (rootless, from a process
that enters the container's user namespace first). As root, local clients' connections to it
go through the kernel instead (``portlink``), the forwarder still listening for the rest. UDP
ports are slirp4netns's host forwards (``add_hostfwd`` on its API socket).

The addresses are slirp4netns's defaults: the container is 10.0.2.100, the gateway 10.0.2.2
reaches the host's 127.0.0.1, and 10.0.2.3 answers DNS with the host's resolver.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from pyrt import _core
from pyrt.config.checks import show
from pyrt.errors import InvalidOption, PyrtError
from pyrt.network.portlink import KernelPorts

GUEST = "10.0.2.100"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
HOST_ALIAS = "host.pyrt.internal"
READY_TIMEOUT = 10.0

#: What ``ports=`` takes for one container port: None (a free port on 127.0.0.1), a port, or
#: "ADDR:PORT" / (ADDR, PORT) to bind another host address (PORT 0: any free port).
HostPort = Union[None, int, str, tuple[str, int]]


@dataclass(frozen=True)
class Published:
    container_port: int
    proto: str
    host_addr: str
    host_port: int


def container_port(key: object, what: str) -> tuple[int, str]:
    """(port, "tcp" or "udp") of a container port as a caller names one: 8080, "8080" or
    "53/udp". A number that is not a port, or another protocol, is an InvalidOption naming
    ``what``; anything but an int or a str a TypeError."""
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"{what}: a container port is an int or a str, not {type(key).__name__}")
    cport, _, proto = str(key).partition("/")
    proto = proto or "tcp"
    if not cport.isdigit() or not 0 < int(cport) < 65536 or proto not in ("tcp", "udp"):
        raise InvalidOption(f"{what}: {key!r} is not a container port (e.g. 8080 or '53/udp')")
    return int(cport), proto


def parse_ports(ports: Optional[Mapping[Any, HostPort]]) -> list[tuple[int, str, str, int]]:
    """(container port, proto, host address, host port or 0), checked before anything exists.
    A key is a port number or "PORT/tcp" / "PORT/udp"; a value None (any free port), a port,
    "PORT" or "ADDR:PORT", or (ADDR, PORT)."""
    if ports is not None and not isinstance(ports, Mapping):
        raise TypeError(f"ports must be a dict of container port to host port, not {show(ports)}")
    out = []
    for key, value in (ports or {}).items():
        cport, proto = container_port(key, "ports")
        addr, hport = host_side(value)
        out.append((cport, proto, addr, hport))
    return out


def host_side(value: object) -> tuple[str, int]:
    """(address, port or 0) of a published port's host side; a value of the wrong type is a
    TypeError, one out of range or not an IPv4 address an InvalidOption."""
    shape = "None, a port, 'ADDR:PORT' or (ADDR, PORT)"
    if value is None:
        return "127.0.0.1", 0
    if isinstance(value, bool):
        raise TypeError(f"ports: a host port is {shape}, not {value!r}")
    if isinstance(value, int):
        addr, hport = "127.0.0.1", value
    elif isinstance(value, str):
        a, _, p = value.rpartition(":")
        if not p.isdigit():
            raise InvalidOption(f"ports: {value!r} is not a host port ({shape})")
        addr, hport = a or "127.0.0.1", int(p)
    elif (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        addr, hport = value
    else:
        raise TypeError(f"ports: a host port is {shape}, not {show(value)}")
    if not 0 <= hport < 65536:
        raise InvalidOption(f"ports: {value!r} is not a host port (0 to 65535)")
    try:
        socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        raise InvalidOption(f"ports: {addr!r} is not an IPv4 address of this host") from None
    return addr, hport


class PrivateNetwork:
    """A network namespace with slirp4netns attached; ``close`` ends both."""

    def __init__(
        self,
        workdir: Path,
        rootless: bool = False,
        configure: bool = True,
        namespaces: Optional[tuple[int, int]] = None,
    ) -> None:
        """As root: makes the namespace and attaches slirp4netns now (the container will join
        ``path``). Rootless: the namespace must belong to the container's user namespace, so
        the container makes it, and ``attach`` is called while it is held before its plan.
        Without ``configure``, the tap is left bare (a shared network bridges it). With
        ``namespaces`` (a user namespace's descriptor and one of its network namespaces', a
        rootless shared network's hub), slirp4netns attaches to those now; they become ours."""
        binary = shutil.which("slirp4netns")
        if binary is None:
            raise PyrtError(
                "network='private' needs slirp4netns (Debian package slirp4netns), not found "
                "on PATH"
            )
        self._binary = binary
        self.rootless = rootless
        self.fd = -1
        self.path: Optional[str] = None
        self.api = workdir / "slirp.sock"
        self.published: list[Published] = []
        self._forwards: list[_core.PortForward] = []
        #: Root: local clients' connections to the published TCP ports, by the kernel.
        self.kernel = KernelPorts()
        self._probes: dict[int, int] = {}
        self._log = workdir / "slirp.log"
        self._exit_w = -1
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._configure = configure
        self.userns_fd = -1
        if namespaces is not None:
            self.userns_fd, self.fd = namespaces
            self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
            target = [f"--userns-path=/proc/{os.getpid()}/fd/{self.userns_fd}",
                      "--netns-type=path", self.path]  # fmt: skip
        elif not rootless:
            self.fd = _core.new_netns()
            self.path = f"/proc/{os.getpid()}/fd/{self.fd}"
            target = ["--netns-type=path", self.path]
        if self.path is not None:
            try:
                self._start_slirp(target, sandbox=namespaces is None)
            except BaseException:
                self.close()
                raise

    @property
    def needs_attach(self) -> bool:
        """Whether the container must be held for ``attach``: rootless, the namespace is the
        container's own, made anew at each start."""
        return self.rootless

    def attach(self, pid: int) -> None:
        """Rootless: attaches slirp4netns to the network namespace of the held container
        ``pid`` (joining its user namespace to do so)."""
        self._start_slirp([f"--userns-path=/proc/{pid}/ns/user", "--netns-type=path",
                           f"/proc/{pid}/ns/net"], sandbox=False)  # fmt: skip
        # Held for the published ports' forwarders, which enter both.
        self.userns_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def _start_slirp(self, target: list[str], sandbox: bool) -> None:
        ready_r, ready_w = os.pipe()
        exit_r, self._exit_w = os.pipe2(os.O_CLOEXEC)
        try:
            with open(self._log, "wb") as log:
                self.proc = subprocess.Popen(
                    [self._binary, *(["--configure"] if self._configure else []),
                     "--mtu=65520", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                     f"--api-socket={self.api}",
                     # (Its sandbox never reports ready when started by an unprivileged user
                     # into a container's user namespace: measured with slirp4netns 1.2.0.)
                     *(["--enable-sandbox"] if sandbox else []), *target, "tap0"],
                    pass_fds=(ready_w, exit_r), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=log,
                )  # fmt: skip
            os.close(ready_w)
            os.close(exit_r)
            ready_w = exit_r = -1
            r, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
            if not r or os.read(ready_r, 1) != b"1":
                full = _no_room(self.api.parent)
                if full is not None:
                    raise full
                raise PyrtError(f"slirp4netns did not come up: {self._tail()}")
        finally:
            for fd in (ready_w, exit_r):
                if fd >= 0:
                    os.close(fd)
            os.close(ready_r)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self._log.read_text(errors="replace").strip().splitlines()
            return " / ".join(lines[-3:]) or "no output"
        return "no output"

    def publish(self, cport: int, proto: str, addr: str, hport: int) -> Published:
        """Forwards ``addr:hport`` on the host (0: a free port) to the container's ``cport``:
        TCP by pyrt's forwarder (rootless, in a process that enters the container's user
        namespace), UDP by slirp4netns."""
        if proto == "tcp":
            users = self.userns_fd if self.rootless else None
            fwd = forward_tcp(self.fd, cport, addr, hport, users)
            self._forwards.append(fwd)
            if users is None and self.path is not None:
                self.kernel.add(self.path, cport, addr, fwd.port)
            p = Published(cport, proto, addr, fwd.port)
        else:
            p = self.hostfwd(GUEST, cport, proto, addr, hport)
        self.published.append(p)
        return p

    def probe_port(self, cport: int) -> tuple[str, int]:
        """Rootless: a host address and port that reach the container's TCP ``cport`` (for
        readiness probes), made once."""
        if cport not in self._probes:
            fwd = forward_tcp(self.fd, cport, "127.0.0.1", 0, self.userns_fd)
            self._forwards.append(fwd)
            self._probes[cport] = fwd.port
        return "127.0.0.1", self._probes[cport]

    def hostfwd(self, guest: str, cport: int, proto: str, addr: str, hport: int) -> Published:
        """slirp4netns's own forward of ``addr:hport`` on the host to ``guest:cport``."""
        return hostfwd(self.api, guest, cport, proto, addr, hport)[0]

    def close(self) -> None:
        # The rules first: once a forwarder's listener closes, its port is anyone's.
        self.kernel.close()
        for f in self._forwards:
            f.close()
        if self._exit_w >= 0:
            os.close(self._exit_w)  # slirp4netns exits when this closes
            self._exit_w = -1
        proc = self.proc
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fd in (self.fd, self.userns_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.userns_fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api)


def _api(api: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to slirp4netns's API socket (any process of its user may use it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(api))
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    reply = json.loads(data or b"{}")
    return reply if isinstance(reply, dict) else {}


def hostfwd(
    api: Path, guest: str, cport: int, proto: str, addr: str, hport: int
) -> tuple[Published, int]:
    """slirp4netns's forward of ``addr:hport`` on the host (0: a free port) to
    ``guest:cport``, through its API socket ``api``; with the forward's id (``unforward``)."""
    for _ in range(20 if hport == 0 else 1):
        port = hport or _free_port(addr, proto)
        try:
            reply = _api(api, {"execute": "add_hostfwd", "arguments": {
                "proto": proto, "host_addr": addr, "host_port": port, "guest_addr": guest,
                "guest_port": cport}})  # fmt: skip
        except (OSError, ValueError) as e:
            raise PyrtError(f"cannot publish container port {cport}/{proto}: {e}") from e
        ret = reply.get("return")
        if isinstance(ret, dict):
            ident = ret.get("id")
            return Published(cport, proto, addr, port), ident if isinstance(ident, int) else -1
        if hport:
            break
        time.sleep(0.01)  # someone took the free port meanwhile: another one
    desc = reply.get("error", {}).get("desc", reply)
    raise PyrtError(
        f"cannot publish container port {cport}/{proto} on {addr}:{hport or 'any'}: "
        f"{'the host port is already in use' if hport else desc} ({desc})"
    )


def unforward(api: Path, ident: int) -> None:
    """Takes slirp4netns's forward ``ident`` away (best effort: slirp4netns may be gone)."""
    with contextlib.suppress(OSError, ValueError):
        _api(api, {"execute": "remove_hostfwd", "arguments": {"id": ident}})


def forward_tcp(
    netns_fd: int, cport: int, addr: str, hport: int, userns_fd: Optional[int] = None
) -> _core.PortForward:
    """pyrt's forwarder of ``addr:hport`` on the host to 127.0.0.1:``cport`` in ``netns_fd``;
    with ``userns_fd`` (a rootless container's namespace belongs to it), in a process that
    enters it first."""
    try:
        if userns_fd is not None:
            return _core.forward_tcp_in(userns_fd, netns_fd, addr, hport, cport)
        return _core.forward_tcp(netns_fd, addr, hport, cport)
    except OSError as e:
        why = "the host port is already in use" if e.errno == errno.EADDRINUSE else e
        raise PyrtError(
            f"cannot publish container port {cport}/tcp on {addr}:{hport or 'any'}: {why}"
        ) from e


def _free_port(addr: str, proto: str) -> int:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def hosts_file(entries: list[tuple[str, list[str]]]) -> str:
    """/etc/hosts: localhost, then each (address, names), then the host's loopback alias."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{' '.join(names)}" for addr, names in entries if names]
    lines.append(f"{GATEWAY}\t{HOST_ALIAS}")
    return "\n".join(lines) + "\n"


def etc_files(hostname: str) -> dict[str, str]:
    """/etc/hosts and /etc/resolv.conf for a container on a private network."""
    return {
        "hosts": hosts_file([(GUEST, [hostname])]),
        "resolv.conf": f"nameserver {DNS}\noptions ndots:0\n",
    }


def _no_room(directory: Path) -> Optional[OSError]:
    """Where slirp4netns could not come up because the state directory is full (its API
    socket is an inode there), the error says so: an ENOSPC naming the directory, which a
    network turns into a NetworkError and a start into a SpawnError, as for their own files."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    if blocks == 0 or (st.f_files > 0 and st.f_ffree == 0):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return None
