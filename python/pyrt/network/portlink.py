"""Root's published TCP ports through the kernel: one connection end to end, as podman's.

pyrt's forwarder (``core/host/portfwd.rs``) joins two connections, the host's and one it opens
inside the container; each request costs its wake-ups, and bulk data two copies' worth of
splices. As root, a local client's connection is instead rewritten by the kernel on its way out
(NAT in nftables), and travels a point-to-point link into the container's namespace:

- a veth pair per container namespace with published TCP ports: ``pyrtpN`` on the host,
  ``pyrt-ports`` inside, with a /30 of 198.18.0.0/15 (RFC 2544's benchmarking range, which no
  real network routes) chosen by N: the interface's name is its allocation, and two processes
  cannot take the same one (the kernel refuses the second name);
- on the host, one nftables table per process, made by an ``nft -i`` that the process keeps:
  the table carries nftables' ``owner`` flag, so the kernel deletes it when that nft's netlink
  socket closes. nft exits at the end of its input, which comes when the process dies: no rule
  outlives its owner, SIGKILL included, and no reaper is needed. Links and ports are elements
  of the table's sets and maps, added and deleted per container;
- inside, a table that sends what arrives on the link to the container's 127.0.0.1 (so a server
  bound to 127.0.0.1 in there is reached, as through the forwarder); it dies with the namespace.

What the rules let through, and nothing else:

- a local connection to a published host address and port is sent to the inside address, from
  the host's end of the link (SNAT: the container replies through the link, and a loopback
  source could not cross it; ``route_localnet`` on both ends lets 127.0.0.1 in and out);
- the host reaches the inside address only by those rewritten connections (a direct one is
  refused), and takes from the link only the replies to them; nothing is forwarded to or from
  the link, so the container gains no way out and the host's other namespaces no way in.

The link is made in the background at the first published port (~15 ms of ``ip``, ``nsenter``
and ``nft``): ``start()`` does not wait for it, since the forwarder, which keeps listening on
the published port (so the port stays taken), serves every connection until the rule is in,
and those it took to their end. Connections from other machines (a port published on 0.0.0.0)
pass no rule of the host's output chain and keep going through the forwarder. Without
nftables (no ``nft``, a kernel without nf_tables), the forwarder serves everything and a
``RuntimeWarning`` says why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import select
import socket
import subprocess
import threading
import warnings
from typing import Optional

from pyrt.errors import PyrtError
from pyrt.network.links import TIMEOUT, find_tool, run_tool

#: 198.18.0.0/15 in /30 blocks: block N is 198.18.0.0 + 4N, the host's end +1, the inside +2.
BASE = int(ipaddress.IPv4Address("198.18.0.0"))
BLOCKS = (1 << 17) // 4
HOST_PREFIX = "pyrtp"
INSIDE = "pyrt-ports"


class PortLinkError(PyrtError):
    """The kernel path of a container's published ports could not be made; ``netns`` is the
    container's network namespace."""

    def __init__(self, message: str, netns: str) -> None:
        super().__init__(f"published ports' kernel path: {message} (network namespace {netns})")
        self.netns = netns


def _run(argv: list[str], netns: str, stdin: str = "", pass_fds: tuple[int, ...] = ()) -> None:
    why = run_tool(argv, stdin, pass_fds)
    if why is not None:
        raise PortLinkError(why, netns)


class PortLink:
    """The link into one container namespace (path ``netns``); ``add`` sends a published port
    through it, ``close`` takes its entries out of the host's table (the link itself goes with
    the namespace, and the table with the process)."""

    def __init__(self, netns: str) -> None:
        ip, nsenter = find_tool("ip"), find_tool("nsenter")
        if ip is None or nsenter is None:
            raise PortLinkError("needs ip and nsenter (Debian packages iproute2, util-linux)",
                                netns)  # fmt: skip
        self.netns = netns
        self._table: Optional[_HostTable] = _HostTable.acquire(netns)
        self._elements: list[str] = []
        self.name = ""
        try:
            self.name, block = self._make_pair(ip, netns)
            self.host = str(ipaddress.IPv4Address(BASE + 4 * block + 1))
            self.inside = str(ipaddress.IPv4Address(BASE + 4 * block + 2))
            self._configure_inside(nsenter)
            self._add_elements([f'host_links {{ "{self.name}" }}',
                                f"inside_addrs {{ {self.inside} }}",
                                f'snat_addrs {{ "{self.name}" : {self.host} }}'])  # fmt: skip
        except BaseException:
            self.close()
            if self.name:
                with contextlib.suppress(PyrtError):
                    _run([ip, "link", "del", self.name], netns)
            raise

    def _make_pair(self, ip: str, netns: str) -> tuple[str, int]:
        """A veth pair, its host end up with its address: the name holds a free block, and a
        taken name fails the whole batch (another block is tried)."""
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for _ in range(8):
                block = secrets.randbelow(BLOCKS)
                name = f"{HOST_PREFIX}{block}"
                if name in {n for _, n in socket.if_nameindex()}:
                    continue
                host = ipaddress.IPv4Address(BASE + 4 * block + 1)
                try:
                    _run([ip, "-batch", "-"], netns, pass_fds=(fd,), stdin="\n".join([
                        f"link add {name} type veth peer name {INSIDE} netns /proc/self/fd/{fd}",
                        f"addr add {host}/30 scope link dev {name}",
                        f"link set {name} up",
                    ]) + "\n")  # fmt: skip
                except PortLinkError as e:
                    # Another process took the name meanwhile: another block.
                    if "exists" in str(e) and name in {n for _, n in socket.if_nameindex()}:
                        continue
                    raise
                break
            else:
                raise PortLinkError("no free link name after 8 tries", netns)
        finally:
            os.close(fd)
        # A loopback source leaves, and a loopback destination (a reply) arrives, through it.
        with open(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "w") as f:
            f.write("1")
        # IPv4 only: no link-local IPv6 address, router solicitation or MLD on it.
        with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6",
                                                "w") as f:  # fmt: skip
            f.write("1")
        return name, block

    def _configure_inside(self, nsenter: str) -> None:
        """Inside: the link's address, and what arrives on it sent to 127.0.0.1 (the port
        kept); only such connections are taken from it. /proc/sys/net is the namespace of
        whoever opens it: written from in there."""
        # Connection tracking, which the NAT needs, would otherwise follow every connection
        # of the namespace: what does not cross the link is left untracked.
        rules = (
            "table ip pyrt_ports { "
            "chain raw_prerouting { type filter hook prerouting priority -300; "
            f'iifname != "{INSIDE}" notrack; }}; '
            "chain raw_output { type filter hook output priority -300; "
            f'oifname != "{INSIDE}" notrack; }}; '
            "chain prerouting { type nat hook prerouting priority -100; "
            f'iifname "{INSIDE}" ip daddr {self.inside} dnat to 127.0.0.1; }}; '
            "chain input { type filter hook input priority 0; "
            f'iifname "{INSIDE}" ct status dnat accept; iifname "{INSIDE}" drop; }}; }}'
        )
        conf = f"/proc/sys/net/ipv4/conf/{INSIDE}/route_localnet"
        no_v6 = f"/proc/sys/net/ipv6/conf/{INSIDE}/disable_ipv6"
        script = (f'echo 1 > {conf} || exit 1; {{ echo 1 > {no_v6}; }} 2>/dev/null; '
                  'ip -batch - && exec "$0" "$1"')  # fmt: skip
        assert self._table is not None
        _run([nsenter, f"--net={self.netns}", "/bin/sh", "-c", script, self._table.nft, rules],
             self.netns, stdin=f"addr add {self.inside}/30 scope link dev {INSIDE}\n"
                                f"link set {INSIDE} up\n")  # fmt: skip

    def add(self, cport: int, addr: str, hport: int) -> None:
        """Local connections to ``addr:hport`` (0.0.0.0: any local address) go to the
        container's 127.0.0.1:``cport``."""
        if addr == "0.0.0.0":
            self._add_elements([f"dnat_local {{ {hport} : {self.inside} . {cport} }}"])
        else:
            self._add_elements([f"dnat_ports {{ {addr} . {hport} : {self.inside} . {cport} }}"])

    def _add_elements(self, elements: list[str]) -> None:
        assert self._table is not None
        self._table.send([f"add element {self._table.name} {e}" for e in elements])
        self._elements += elements

    def close(self) -> None:
        """Takes the link's entries out of the host's table (a host port is free for another
        container once this one is gone), and lets the table go with its last link."""
        table, self._table = self._table, None
        if table is None:
            return
        elements, self._elements = self._elements, []
        if elements:
            with contextlib.suppress(PyrtError):
                table.send([f"delete element {table.name} {e}" for e in elements])
        table.release()


class _HostTable:
    """The host's side, one per process while it has links: a table with nftables' ``owner``
    flag, made by an ``nft -i`` that this process keeps. The kernel deletes the table when that
    nft's netlink socket closes, which happens when nft reads the end of its input: when the
    last link is closed, or this process dies. Links and ports are elements of its sets and
    maps, so a container adds and deletes entries, never rules."""

    _lock = threading.Lock()
    _current: Optional[_HostTable] = None

    @classmethod
    def acquire(cls, netns: str) -> _HostTable:
        """The process's table (made if there is none), for one more link."""
        with cls._lock:
            table = cls._current
            if table is None or table._proc.poll() is not None:
                table = cls._current = _HostTable(netns)
            table._users += 1
            return table

    def release(self) -> None:
        """One link fewer; nft ends with the last."""
        with _HostTable._lock:
            self._users -= 1
            if self._users > 0:
                return
            if _HostTable._current is self:
                _HostTable._current = None
        self.close()

    def __init__(self, netns: str) -> None:
        nft = find_tool("nft")
        if nft is None:
            raise PortLinkError("needs nft (Debian package nftables)", netns)
        self.nft = nft
        self.netns = netns
        self.name = f"ip pyrt_{os.getpid()}_{secrets.token_hex(3)}"
        self._send_lock = threading.Lock()
        self._users = 0
        self._proc = subprocess.Popen([nft, "-i"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        t = self.name
        try:
            self.send(
                [
                    f"add table {t} {{ flags owner; }}",
                    f"add set {t} host_links {{ type ifname; }}",
                    f"add set {t} inside_addrs {{ type ipv4_addr; }}",
                    f"add map {t} dnat_ports {{ type ipv4_addr . inet_service : "
                    "ipv4_addr . inet_service; }",
                    f"add map {t} dnat_local {{ type inet_service : ipv4_addr . inet_service; }}",
                    f"add map {t} snat_addrs {{ type ifname : ipv4_addr; }}",
                    f"add chain {t} nat_output {{ type nat hook output priority -100; }}",
                    f"add rule {t} nat_output dnat ip to ip daddr . tcp dport map @dnat_ports",
                    f"add rule {t} nat_output fib daddr type local "
                    "dnat ip to tcp dport map @dnat_local",
                    f"add chain {t} nat_postrouting {{ type nat hook postrouting priority 100; }}",
                    f"add rule {t} nat_postrouting snat ip to oifname map @snat_addrs",
                    f"add chain {t} output {{ type filter hook output priority 0; }}",
                    f"add rule {t} output ip daddr @inside_addrs ct status dnat accept",
                    f"add rule {t} output ip daddr @inside_addrs reject",
                    f"add chain {t} input {{ type filter hook input priority 0; }}",
                    f"add rule {t} input iifname @host_links ct state established,related accept",
                    f"add rule {t} input iifname @host_links drop",
                    f"add chain {t} forward {{ type filter hook forward priority 0; }}",
                    f"add rule {t} forward iifname @host_links drop",
                    f"add rule {t} forward oifname @host_links drop",
                ]
            )
        except BaseException:
            self.close()
            raise

    def send(self, commands: list[str]) -> None:
        """Sends commands to nft, then a listing of one small chain, and reads up to that
        listing's end: nft -i answers nothing else but errors, which come first. (Read from
        the descriptor itself: a buffered reader would take the answer in, out of select's
        sight.)"""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        with self._send_lock:
            try:
                lines = [*commands, f"list chain {self.name} forward"]
                proc.stdin.write("\n".join(lines).encode() + b"\n")
                proc.stdin.flush()
            except OSError as e:
                raise PortLinkError(f"nft is gone ({e})", self.netns) from e
            out = b""
            while not out.endswith(b"\n}\n"):
                ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
                chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
                if not chunk:
                    raise PortLinkError(f"nft did not answer: {_errors(out)}", self.netns)
                out += chunk
                if len(out) > 1 << 20:
                    raise PortLinkError("nft's answer is too long", self.netns)
        if _errors(out):
            raise PortLinkError(f"nft refused: {_errors(out)}", self.netns)

    def close(self) -> None:
        """Ends nft, and with it the table (not waited for: the kernel's deletion of a table
        waits out a grace period, tens of milliseconds)."""
        proc = self._proc
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        threading.Thread(target=proc.wait, name="pyrt-nft-reap", daemon=True).start()


def _forget_in_child() -> None:
    """A forked child must not keep the parent's nft (and its table) alive: its copy of the
    pipe is closed, and the child makes its own table if it publishes ports."""
    current, _HostTable._current = _HostTable._current, None
    _HostTable._lock = threading.Lock()
    if current is not None:
        for f in (current._proc.stdin, current._proc.stdout):
            with contextlib.suppress(OSError, ValueError):
                if f is not None:
                    f.close()


os.register_at_fork(after_in_child=_forget_in_child)


def _errors(out: bytes) -> str:
    """nft's error messages in its output, with the command each names."""
    lines = out.decode(errors="replace").splitlines()
    return " / ".join(
        line.strip()
        for i, line in enumerate(lines)
        if line.startswith("Error") or (i and lines[i - 1].startswith("Error"))
    )


class KernelPorts:
    """A container namespace's ``PortLink``, made in the background at its first published
    TCP port: ``start()`` does not wait for it, since the forwarder already serves the port
    and keeps serving the connections it took. The shape both ``PrivateNetwork`` and a shared
    network's ``Member`` keep."""

    _warned = False

    def __init__(self) -> None:
        self._link: Optional[PortLink] = None
        self.failed: Optional[str] = None
        self._queue: list[tuple[str, int, str, int]] = []
        self._worker: Optional[threading.Thread] = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def link(self) -> Optional[PortLink]:
        return self._link

    def add(self, netns: str, cport: int, addr: str, hport: int) -> None:
        """As ``PortLink.add``, soon; on failure the forwarder keeps serving the port, and
        the first failure of the process is a ``RuntimeWarning``."""
        with self._lock:
            if self._closed or self.failed is not None:
                return
            self._queue.append((netns, cport, addr, hport))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="pyrt-portlink",
                                                 daemon=True)  # fmt: skip
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue or self._closed:
                    self._worker = None
                    return
                netns, cport, addr, hport = self._queue.pop(0)
            try:
                if self._link is None:
                    self._link = PortLink(netns)
                self._link.add(cport, addr, hport)
            except Exception as e:  # (this thread's end: the forwarder serves, as said)
                with self._lock:
                    self.failed, self._queue, self._worker = str(e), [], None
                if not KernelPorts._warned:
                    KernelPorts._warned = True
                    warnings.warn(f"{e}; pyrt's forwarder serves these ports", RuntimeWarning,
                                  stacklevel=1)  # fmt: skip
                return

    def wait(self) -> None:
        """Until every port given so far goes through the link (or failed, see ``failed``)."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._queue = []
            worker = self._worker
        if worker is not None:
            worker.join()
        if self._link is not None:
            self._link.close()
            self._link = None
