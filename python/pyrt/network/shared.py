"""``pyrt.Network``: a private network that several containers join by name.

Its shape is that of a small switch behind slirp4netns:

- the network's own namespace (the hub) holds a bridge and slirp4netns's tap, left
  unconfigured: slirp4netns is the gateway (10.0.2.2, the host's loopback) and the DNS server
  (10.0.2.3) of the whole segment, which gives the members the same outbound access as
  ``network="private"``;
- each member has a network namespace of its own, plugged into the bridge by a veth pair, with
  an address of 10.0.2.0/24 that it keeps for its life (``reset`` included);
- names are /etc/hosts entries: each member's file lists every member's name, aliases and
  hostname, and is rewritten in place when a member joins or leaves. Nothing outside the
  members reads those files, so the names resolve from the members and from nowhere else.

Traffic between members crosses the bridge only: it never leaves the machine, nor reaches the
host's own namespaces (the hub has no address and no route to them).

Rootless, the members share one user namespace, the network's (the caller's usual mapping),
made with the hub's namespace (``_core.new_userns_netns``): plugging a veth pair takes
privilege over both ends' namespaces, which an unprivileged caller has only inside a user
namespace that owns them all. A member joins that user namespace by path; the core's first
stage makes the member's other namespaces inside it (``core/child/stage1.rs``), and the held
member is plugged in from inside it (``Member.attach``).

The network lives as long as its owner, the process that made it (``pyrt network create`` makes
a small holder process for it). Its registry directory, ``<state>/networks/<name>/``, lets other
processes' containers join: ``state.json`` (owner, hub, user namespace), a ``lock`` its owner
holds, and one record per member under ``members/`` (allocated under ``members.lock``). When
the owner dies, the kernel ends slirp4netns (its exit descriptor) and the hub (its last
descriptor); the reaper deletes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from pyrt import _core
from pyrt.config import checks
from pyrt.errors import PyrtError, os_message
from pyrt.host import collect, reaper, state, userns
from pyrt.network import links
from pyrt.network.portlink import KernelPorts
from pyrt.network.private import (
    DNS,
    GATEWAY,
    PrivateNetwork,
    Published,
    forward_tcp,
    hostfwd,
    hosts_file,
    unforward,
)

if TYPE_CHECKING:
    from pyrt.container.container import Container

PREFIX = "10.0.2."
#: Members' addresses: below are slirp4netns's own (gateway, DNS, its DHCP range from .15).
FIRST, LAST = 16, 254


class NetworkError(PyrtError):
    """A shared network's operation failed; ``network`` names it."""

    def __init__(self, message: str, network: str) -> None:
        super().__init__(f"network {network!r}: {message}")
        self.network = network


def _os_error(e: OSError, network: str) -> NetworkError:
    """An OSError of the network's files or kernel objects (a full state directory, say), as
    the network's error, naming the path."""
    return NetworkError(os_message(e), network)


@dataclass(frozen=True)
class MemberRecord:
    """A member as other processes see it (``members/<n>.json``)."""

    address: str
    container: str
    names: tuple[str, ...]
    hosts: str
    dir: str

    @property
    def alive(self) -> bool:
        """Whether the member's owner still holds its container directory."""
        return state.owner_alive(Path(self.dir))


class Network:
    """A private network shared by containers: ``pyrt.Network(name=None)``; members join with
    ``pyrt.Container(..., network=net, aliases=[...])``. ``with pyrt.Network() as net:``
    removes it (and its members) at the end."""

    def __init__(self, name: Optional[str] = None) -> None:
        checked = checks.name(name, "name")
        self.name = checked or f"pyrt-net-{secrets.token_hex(4)}"
        try:
            self._path = state.networks_root() / self.name
        except OSError as e:  # (a full or read-only state directory)
            raise _os_error(e, self.name) from e
        self._owner = True
        self._hub: Optional[PrivateNetwork] = None
        self._lock_fd = -1
        self._members: dict[str, Container] = {}
        self._removed = False
        self._mutex = threading.Lock()
        collect.collect_stale_once()
        try:
            try:
                self._path.mkdir(mode=0o700)
            except FileExistsError:  # a dead owner's, perhaps: collected, then tried again
                collect.collect_stale_networks(only={self.name})
                self._path.mkdir(mode=0o700)
        except FileExistsError:
            raise NetworkError("a network of that name exists", self.name) from None
        except OSError as e:
            raise _os_error(e, self.name) from e
        try:
            self._lock_fd = state.locked_file(self._path / "lock")
            reaper.watch(reaper.NETWORK + self.name)
            (self._path / "members").mkdir(mode=0o700)
            self._hub = PrivateNetwork(self._path, configure=False, namespaces=_rootless_ns())
            assert self._hub.path is not None
            own_userns = self._hub.userns_fd >= 0
            users = f"/proc/{os.getpid()}/fd/{self._hub.userns_fd}" if own_userns else None
            links.make_hub(self._hub.path, userns=users)
            self._write_state({"name": self.name, "owner": os.getpid(),
                               "hub": self._hub.path, "userns": users, "created": time.time(),
                               "held": _holding})  # fmt: skip
        except BaseException as e:
            self._teardown()
            if isinstance(e, OSError) and not isinstance(e, PyrtError):
                raise _os_error(e, self.name) from e
            raise
        _live.add(self)

    @classmethod
    def open(cls, name: str) -> Network:
        """The network ``name``: this process's own, or another process's (joined through its
        registry directory)."""
        name = checks.name(name, "network") or ""
        for net in list(_live):
            if net.name == name and not net._removed:
                return net
        path = state.networks_root() / name
        doc = state.read_state(path)
        if doc is None or not state.owner_alive(path):
            raise NetworkError("no such network (see `pyrt network ls`)", name)
        net = cls.__new__(cls)
        net.name, net._path, net._owner, net._hub = name, path, False, None
        net._lock_fd, net._members, net._removed = -1, {}, False
        net._mutex = threading.Lock()
        return net

    def __repr__(self) -> str:
        return f"<pyrt.Network {self.name} {len(self.containers)} containers>"

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(force=True)

    # --- what it is ------------------------------------------------------------------

    @property
    def hub(self) -> str:
        """Path of the hub's network namespace."""
        if self._hub is not None and self._hub.path is not None:
            return self._hub.path
        doc = state.read_state(self._path)
        if self._removed or doc is None or not state.owner_alive(self._path):
            raise NetworkError("the network was removed", self.name)
        return str(doc["hub"])

    @property
    def userns(self) -> Optional[str]:
        """Rootless: path of the network's user namespace, which its members share (their other
        namespaces, and the hub's, belong to it); None as root."""
        if self._hub is not None:
            fd = self._hub.userns_fd
            return f"/proc/{os.getpid()}/fd/{fd}" if fd >= 0 else None
        doc = state.read_state(self._path)
        if self._removed or doc is None or not state.owner_alive(self._path):
            raise NetworkError("the network was removed", self.name)
        users = doc.get("userns")
        return users if isinstance(users, str) else None

    @property
    def containers(self) -> list[Container]:
        """This process's containers on the network that were not removed."""
        return [c for c in list(self._members.values()) if c.status != "removed"]

    def records(self) -> list[MemberRecord]:
        """Every member, of any process, whose owner lives."""
        out = []
        for f in sorted((self._path / "members").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                d = json.loads(f.read_text())
                out.append(MemberRecord(d["address"], d["container"], tuple(d["names"]),
                                        d["hosts"], d["dir"]))  # fmt: skip
        return [r for r in out if r.alive]

    # --- members ---------------------------------------------------------------------

    def join(self, c: Container, container_dir: Path, names: list[str]) -> Member:
        """A new member's namespace, plugged in, with its address and its record; /etc/hosts
        of every member is rewritten to name it. ``c`` joins the namespace by path.

        Rootless, the namespace must belong to the network's user namespace, which only a
        process inside it can make: the member's own first stage does (``child::stage1``), and
        the member is plugged in by ``Member.attach`` while the container is held."""
        hub, users = self.hub, self.userns
        if users is not None:
            with self._allocation():
                address = self._free_address()
                self._record_path(address).write_text(json.dumps({
                    "address": address, "container": c.id, "names": names,
                    "hosts": str(container_dir / "hosts"), "dir": str(container_dir)}))  # fmt: skip
            (container_dir / "resolv.conf").write_text(f"nameserver {DNS}\noptions ndots:0\n")
            with self._mutex:
                self._members[c.id] = c
            return Member(self, c.id, -1, None, address, f"v{c.id[:12]}")
        fd = _core.new_netns()
        path = f"/proc/{os.getpid()}/fd/{fd}"
        try:
            with self._allocation():
                address = self._free_address()
                record = {
                    "address": address,
                    "container": c.id,
                    "names": names,
                    "hosts": str(container_dir / "hosts"),
                    "dir": str(container_dir),
                }
                self._record_path(address).write_text(json.dumps(record))
            link = f"v{c.id[:12]}"
            try:
                links.plug(hub, path, link, address, GATEWAY)
                (container_dir / "resolv.conf").write_text(f"nameserver {DNS}\noptions ndots:0\n")
                self.refresh()
            except BaseException:
                self._record_path(address).unlink(missing_ok=True)
                raise
        except BaseException:
            os.close(fd)
            raise
        with self._mutex:
            self._members[c.id] = c
        return Member(self, c.id, fd, path, address, link)

    def leave(self, member: Member) -> None:
        self._record_path(member.address).unlink(missing_ok=True)
        with self._mutex:
            self._members.pop(member.container, None)
        with contextlib.suppress(PyrtError, OSError):
            self.refresh()

    def refresh(self) -> None:
        """Rewrites every member's /etc/hosts (in place: the file is bind-mounted)."""
        with self._allocation():
            recs = self.records()
            text = hosts_file([(r.address, list(r.names)) for r in recs]).encode()
            for r in recs:
                with contextlib.suppress(OSError):
                    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                    fd = os.open(r.hosts, flags, 0o644)
                    try:
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, text, 0)
                    finally:
                        os.close(fd)

    def _record_path(self, address: str) -> Path:
        return self._path / "members" / f"{address.rsplit('.', 1)[1]}.json"

    @contextlib.contextmanager
    def _allocation(self) -> Iterator[None]:
        fd = os.open(self._path / "members.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _free_address(self) -> str:
        """The next free address after the last one given: an address is not given again
        soon after its member left, while peers may still hold its old link in their ARP
        caches."""
        taken = {int(r.address.rsplit(".", 1)[1]) for r in self.records()}
        for f in (self._path / "members").glob("*.json"):
            if f.stem.isdigit() and int(f.stem) not in taken:
                f.unlink(missing_ok=True)  # a dead owner's member
        last_file = self._path / "last"
        try:
            last = int(last_file.read_text())
        except (OSError, ValueError):
            last = FIRST - 1
        span = LAST - FIRST + 1
        for step in range(1, span + 1):
            n = FIRST + (last - FIRST + step) % span
            if n not in taken:
                last_file.write_text(str(n))
                return PREFIX + str(n)
        raise NetworkError(f"all {span} addresses are taken", self.name)

    # --- the end ---------------------------------------------------------------------

    def remove(self, force: bool = False) -> None:
        """Removes the network. Refused while members run, unless ``force``: then they are
        removed (this process's) or killed (other processes')."""
        force = checks.flag(force, "force")
        if self._removed:
            return
        running = [c for c in self.containers if c.status in ("running", "paused")]
        others = [r for r in self.records() if r.container not in self._members]
        if (running or others) and not force:
            names = [c.name or c.id[:12] for c in running] + [r.container[:12] for r in others]
            raise NetworkError(
                f"{len(names)} members run ({', '.join(names)}): remove them first, or force "
                "it (remove(force=True), `pyrt network rm -f`)",
                self.name,
            )
        for c in self.containers:
            c.remove()
        for r in others:
            _kill_container(r.container)
        if not self._owner:
            self._ask_owner_to_remove()
            return
        self._teardown()

    def _ask_owner_to_remove(self) -> None:
        doc = state.read_state(self._path) or {}
        owner = doc.get("owner")
        if not doc.get("held") or not isinstance(owner, int):
            raise NetworkError(
                f"it belongs to process {owner}, which removes it (or ends, and it goes)",
                self.name,
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while state.owner_alive(self._path) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._removed = True

    def _teardown(self) -> None:
        self._removed = True
        _live.discard(self)
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        if self._path.exists():
            shutil.rmtree(self._path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
            reaper.forget(reaper.NETWORK + self.name)

    def _write_state(self, doc: dict[str, Any]) -> None:
        _core.write_replacing(str(self._path / "state.json"), json.dumps(doc))


class Member:
    """A container's place on a network: its namespace (``path``), address and published
    ports. Has the shape of ``PrivateNetwork`` that the container drives."""

    def __init__(
        self, net: Network, container: str, fd: int, path: Optional[str], address: str,
        link: str,
    ) -> None:  # fmt: skip
        self.network = net
        self.container = container
        self.fd = fd
        self.path = path
        self.address = address
        self.link = link
        self.userns = net.userns
        self.published: list[Published] = []
        self._forwards: list[_core.PortForward] = []
        self._slirp_forwards: list[int] = []
        #: Root: local clients' connections to the published TCP ports, by the kernel.
        self.kernel = KernelPorts()
        self._probes: dict[int, int] = {}
        self._left = False

    @property
    def needs_attach(self) -> bool:
        """Whether the container must be held for ``attach``: a rootless member's namespace is
        made by the container itself, the first time (later starts join the kept one)."""
        return self.path is None

    def attach(self, pid: int) -> None:
        """Rootless: plugs the namespace of the held container ``pid`` in, and keeps it (a
        reset joins it again, with the same address)."""
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        path = f"/proc/{os.getpid()}/fd/{fd}"
        try:
            links.plug(self.network.hub, path, self.link, self.address, GATEWAY, self.userns)
            self.network.refresh()
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.path = fd, path

    def publish(self, cport: int, proto: str, addr: str, hport: int) -> Published:
        """TCP by pyrt's forwarder (rootless, in a process that enters the network's user
        namespace: so only once the member's namespace exists, see ``attach``); UDP by
        slirp4netns's forward to the member's address, asked on the network's API socket (any
        process of the network's user may)."""
        if proto == "tcp":
            fwd = self._forward(cport, addr, hport)
            if self.userns is None and self.path is not None:
                self.kernel.add(self.path, cport, addr, fwd.port)
            p = Published(cport, proto, addr, fwd.port)
        else:
            p, ident = hostfwd(self.network._path / "slirp.sock", self.address, cport, proto,
                               addr, hport)  # fmt: skip
            self._slirp_forwards.append(ident)
        self.published.append(p)
        return p

    def _forward(self, cport: int, addr: str, hport: int) -> _core.PortForward:
        if self.userns is None:
            fwd = forward_tcp(self.fd, cport, addr, hport)
        else:
            users = os.open(self.userns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fwd = forward_tcp(self.fd, cport, addr, hport, users)
            finally:
                os.close(users)
        self._forwards.append(fwd)
        return fwd

    def probe_port(self, cport: int) -> tuple[str, int]:
        """Rootless: a host address and port that reach the member's TCP ``cport`` (for
        readiness probes), made once and taken away with the member."""
        if cport not in self._probes:
            self._probes[cport] = self._forward(cport, "127.0.0.1", 0).port
        return "127.0.0.1", self._probes[cport]

    def close(self) -> None:
        # The rules first: once a forwarder's listener closes, its port is anyone's.
        self.kernel.close()
        for f in self._forwards:
            f.close()
        self._forwards = []
        for ident in self._slirp_forwards:
            unforward(self.network._path / "slirp.sock", ident)
        self._slirp_forwards = []
        if not self._left:
            self._left = True
            self.network.leave(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _rootless_ns() -> Optional[tuple[int, int]]:
    """An unprivileged caller's network: its user namespace (the caller's usual container
    mapping, ``userns.maps_for_caller``) and the hub's network namespace, born in it. None as
    root."""
    if os.geteuid() == 0:
        return None
    maps = userns.maps_for_caller()
    try:
        return _core.new_userns_netns(list(maps.uid), list(maps.gid))
    except OSError as e:
        why = userns.blocked_because()
        raise PyrtError(
            f"a user namespace for the network: {e}" + (f": {why}" if why else "")
        ) from e


def list_networks() -> list[dict[str, Any]]:
    """Every network on this machine whose owner lives: name, owner, members."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        for e in sorted(os.scandir(state.networks_root()), key=lambda e: e.name):
            path = Path(e.path)
            doc = state.read_state(path)
            if doc is None or not state.owner_alive(path):
                continue
            net = Network.open(e.name)
            doc["members"] = [{"address": r.address, "container": r.container,
                               "names": list(r.names)} for r in net.records()]  # fmt: skip
            out.append(doc)
    return out


def _kill_container(cid: str) -> None:
    for st in state.list_states():
        if st["id"] == cid and st.get("status") == "running" and isinstance(st.get("pid"), int):
            with contextlib.suppress(ProcessLookupError):
                os.kill(st["pid"], signal.SIGKILL)


_live: weakref.WeakSet[Network] = weakref.WeakSet()
#: Set in the holder process of `pyrt network create` (``main``).
_holding = False


def _remove_all_at_exit() -> None:
    for net in list(_live):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            net.remove(force=True)


atexit.register(_remove_all_at_exit)


def main(report_fd: int, name: str) -> int:
    """The holder of a network made by `pyrt network create`: reports ``ok`` or the error on
    ``report_fd``, then keeps the network until SIGTERM (`pyrt network rm`)."""
    global _holding
    # Blocked, then waited for: no window where a SIGTERM comes before the wait and is lost.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _holding = True
    try:
        net = Network(name)
    except (PyrtError, ValueError, OSError) as e:
        os.write(report_fd, f"err {e}\n".encode())
        return 1
    os.write(report_fd, b"ok\n")
    os.close(report_fd)
    signal.sigwait({signal.SIGTERM})
    net.remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2]))
