"""A container's network: its private one or its place on a shared pyrt.Network, made before
the container so that it is ready when the command runs, its published ports, and the /etc
files that go with it (a base class of ``pyrt.Container``)."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Optional, Union, cast

from pyrt import _core
from pyrt.config import options
from pyrt.config.mounts import Bind
from pyrt.errors import PyrtError
from pyrt.network.private import GUEST, PrivateNetwork, etc_files
from pyrt.network.private import container_port as _container_port
from pyrt.network.shared import Member, Network

if TYPE_CHECKING:
    from pyrt.container.container import Container
    from pyrt.host.state import ContainerDir
    from pyrt.host.userns import IdMaps


class ContainerNetworking:
    """The network methods of ``pyrt.Container``."""

    if TYPE_CHECKING:
        id: str
        _o: options.ContainerOptions
        _net: Union[PrivateNetwork, Member, None]
        _network: Optional[Network]
        _join_net: Optional[Container]
        _userns: Optional[IdMaps]
        _ports: list[tuple[int, str, str, int]]

    def _netns_path(self) -> Optional[str]:
        if self._net is not None:
            return self._net.path
        if self._join_net is not None:
            other = self._join_net
            if other.status not in ("running", "paused"):
                raise PyrtError(f"network: container {other.id[:12]} is not running")
            return f"/proc/{other.pid}/ns/net"
        return None

    def _start_network(self, d: ContainerDir) -> list[dict[str, Any]]:
        """The private network (before the container exists, so that it is ready when the
        command runs), its published ports, and the /etc files that go with it. A network that
        outlived a reset (as root) is kept: same namespace, address and forwarders."""
        if self._o.network == "shared":
            return self._join_network(d)
        if self._o.network != "private":
            return []
        if self._net is None:
            self._net = PrivateNetwork(d.path, rootless=self._userns is not None)
            if not self._net.needs_attach:
                self._publish()
        mounts = []
        for name, text in etc_files(self._o.hostname or self.id[:12]).items():
            (d.path / name).write_text(text)
            mounts.append(Bind(str(d.path / name), f"/etc/{name}").to_spec())
        return mounts

    def _join_network(self, d: ContainerDir) -> list[dict[str, Any]]:
        """A member's namespace on its shared network, its ports, and its /etc files (kept, as
        the address, across a reset)."""
        assert self._network is not None
        if self._net is None:
            o = self._o
            names = [n for n in (o.name, *o.aliases, o.hostname or self.id[:12]) if n]
            self._net = self._network.join(
                cast("Container", self), d.path, list(dict.fromkeys(names))
            )
            if not self._net.needs_attach:
                self._publish()  # (rootless: once attached, see _attach_network)
        else:
            self._network.refresh()
        return [Bind(str(d.path / n), f"/etc/{n}").to_spec() for n in ("hosts", "resolv.conf")]

    @property
    def ip(self) -> Optional[str]:
        """The container's address on its network (a pyrt.Network's, or 10.0.2.100 on its
        private one), once started; None without one."""
        if isinstance(self._net, Member):
            return self._net.address
        return GUEST if self._net is not None else None

    @property
    def network(self) -> Optional[Network]:
        """The shared network the container is on, if any."""
        return self._network

    def _publish(self) -> None:
        assert self._net is not None
        for cport, proto, addr, hport in self._ports:
            self._net.publish(cport, proto, addr, hport)

    def _userns_path(self) -> Optional[str]:
        """A rootless network's user namespace, which its members join (None otherwise)."""
        return self._net.userns if isinstance(self._net, Member) else None

    def _attach_network(self, proc: _core.Process) -> None:
        """Rootless: the held container made its network namespace; slirp4netns joins it (a
        private network's) or it is plugged into the shared network's bridge, and the ports
        are published, before the command runs."""
        assert self._net is not None
        try:
            self._net.attach(proc.pid)
            self._publish()
            proc.release()
        except BaseException:
            proc.kill(signal.SIGKILL)
            proc.wait(None)
            raise

    def port(self, container_port: Union[int, str]) -> int:
        """The host port that reaches ``container_port`` ("PORT/udp" for a UDP one)."""
        cport, proto = _container_port(container_port, "port")
        for p in self._net.published if self._net is not None else ():
            if p.container_port == cport and p.proto == proto:
                return p.host_port
        raise PyrtError(
            f"container {self.id[:12]} has no published port {container_port}"
            + ("" if self._net is not None else " (it is not started, or has no ports=)")
        )
