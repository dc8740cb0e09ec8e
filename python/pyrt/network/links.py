"""The links of a shared network (``networks``): a bridge in the network's own namespace (the
hub), and one veth pair per member, its inside end named ``eth0`` in the member's namespace.

iproute2 does the work, one ``ip -batch`` per namespace and step, entered with util-linux's
nsenter: a few milliseconds per member, against the hand-written netlink this would take
otherwise. Both are Debian's (iproute2, util-linux)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

from pyrt.errors import PyrtError

#: slirp4netns's MTU: the largest its tap takes, so that bulk traffic goes in few frames.
MTU = 65520
BRIDGE = "br0"
TAP = "tap0"
PREFIX = 24


class LinkError(PyrtError):
    """An iproute2 step failed; ``netns`` is the namespace it ran in."""

    def __init__(self, message: str, netns: str) -> None:
        super().__init__(f"{message} (in network namespace {netns})")
        self.netns = netns


#: How long one run of a network tool (ip, nft) may take.
TIMEOUT = 10.0


def find_tool(name: str) -> Optional[str]:
    """``name`` on PATH, or in the system's directories (a user's PATH may lack /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _tool(name: str, package: str) -> str:
    path = find_tool(name)
    if path is None:
        raise PyrtError(f"pyrt.Network needs {name} (Debian package {package}), not found")
    return path


def run_tool(
    argv: list[str], stdin: str = "", pass_fds: tuple[int, ...] = (), name: str = ""
) -> Optional[str]:
    """Runs a network tool to its end: None, or why it failed in its own words (``name``
    says which tool, when ``argv`` starts with nsenter or a shell). Each caller raises its
    own error with it."""
    name = name or os.path.basename(argv[0])
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                           pass_fds=pass_fds)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"{name} did not finish within {TIMEOUT:g} s"
    if r.returncode != 0:
        return f"{name} failed: " + (r.stderr or r.stdout).strip().replace("\n", " / ")
    return None


def batch(
    netns: str,
    commands: list[str],
    low_ports: bool = False,
    userns: Optional[str] = None,
    pass_fds: tuple[int, ...] = (),
) -> None:
    """Runs ``ip`` commands (one per line, as ``ip -batch`` reads them) in the network
    namespace at path ``netns``, from inside the user namespace at path ``userns`` (a rootless
    network's, which owns its namespaces) if given; with ``low_ports``, anyone there may bind
    ports below 1024 too, as in Docker's containers: the namespace is root's, and a container
    with a user namespace of its own has no privilege over it."""
    nsenter = _tool("nsenter", "util-linux")
    ip = _tool("ip", "iproute2")
    # The caller is the namespace's 0 already; nsenter's own setgroups would be refused where
    # setgroups is "deny" (a caller without subordinate ids).
    enter = [f"--user={userns}", "--preserve-credentials"] if userns else []
    argv = [nsenter, *enter, f"--net={netns}", ip, "-batch", "-"]
    if low_ports:
        # /proc/sys/net is the namespace of whoever opens it: written from in there.
        script = 'echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start && exec "$@"'
        at = 2 + len(enter)
        argv[at:at] = ["/bin/sh", "-c", script, "-"]
    why = run_tool(argv, "\n".join(commands) + "\n", pass_fds, name="ip")
    if why is not None:
        raise LinkError(why, netns)


def make_hub(hub: str, userns: Optional[str] = None) -> None:
    """The bridge, with slirp4netns's tap (already in ``hub``) as its way out."""
    batch(hub, userns=userns, commands=[
        f"link add {BRIDGE} mtu {MTU} type bridge",
        f"link set {TAP} mtu {MTU} master {BRIDGE} up",
        f"link set {BRIDGE} up",
    ])  # fmt: skip


def plug(
    hub: str, member: str, link: str, address: str, gateway: str, userns: Optional[str] = None
) -> None:
    """A veth pair: ``link`` on the bridge in ``hub``, ``eth0`` with ``address`` and the
    default route through ``gateway`` in the namespace at path ``member``."""
    # Handed to ip as its own descriptor: inside a user namespace, another process's
    # /proc/PID/fd is out of reach (no CAP_SYS_PTRACE over the caller's namespace).
    fd = os.open(member, os.O_RDONLY | os.O_CLOEXEC)
    try:
        batch(hub, userns=userns, pass_fds=(fd,), commands=[
            f"link add {link} mtu {MTU} type veth peer name eth0 netns /proc/self/fd/{fd}",
            f"link set {link} master {BRIDGE} up",
        ])  # fmt: skip
    finally:
        os.close(fd)
    batch(
        member,
        [
            "link set lo up",
            "link set eth0 up",
            f"addr add {address}/{PREFIX} dev eth0",
            f"route add default via {gateway}",
        ],
        low_ports=True,
        userns=userns,
    )


def unplug(hub: str, link: str, userns: Optional[str] = None) -> None:
    """Takes the hub's end of a member's pair away (its peer goes with it)."""
    batch(hub, [f"link del {link}"], userns=userns)
