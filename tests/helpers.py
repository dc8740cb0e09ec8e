"""Test helpers: a busybox root filesystem and snapshots of what pyrt could leak."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

PASSWD = """root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
staff:x:50:app
wheel:x:10:app,root
app:x:1000:
nogroup:x:65534:
"""


def is_static(path: str) -> bool:
    out = subprocess.run(["file", "-L", path], capture_output=True, text=True).stdout
    return "statically linked" in out or "static-pie" in out


def make_busybox_rootfs(root: Path) -> Path:
    """A minimal root filesystem: a static busybox with every applet linked, /etc/passwd and
    /etc/group with a non-root user, and the usual empty directories."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "var"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox" and not (root / "bin" / a).exists():
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    (root / "etc" / "marker").write_text("busybox-image\n")
    if os.geteuid() == 0:  # (an unprivileged caller's files are all its own)
        os.chown(root / "home" / "app", 1000, 1000)
    return root


def make_tarball(src: Path, dest: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=".")
    return dest


# --- what pyrt could leak -----------------------------------------------------------------


def pyrt_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if "pyrt" in line]


def pyrt_cgroups() -> list[str]:
    found = []
    for base, dirs, _files in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if "pyrt" in d:
                found.append(os.path.join(base, d))
        if base.count("/") > 6:
            dirs[:] = []
    return found


def foreign_pidns_processes() -> set[int]:
    """Processes in another pid namespace than ours: every container process is one."""
    mine = os.readlink("/proc/self/ns/pid")
    out = set()
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{e}/ns/pid") != mine:
                out.add(int(e))
        except OSError:
            continue
    return out


def helper_processes(*names: str) -> set[int]:
    """pyrt's helpers outside containers: the user-mode network's slirp4netns, containers'
    exec servers, and reapers (one per owning process) whose owner is gone."""
    names = names or ("slirp4netns", "pyrt-reaper", "pyrt-exec")
    out = set()
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            comm = Path(f"/proc/{e}/comm").read_text().strip()
            if comm not in names:
                continue
            if comm == "pyrt-reaper":
                owner = Path(f"/proc/{e}/cmdline").read_bytes().split(b"\0")[-2]
                if os.path.exists(f"/proc/{int(owner)}"):
                    continue
            out.add(int(e))
        except (OSError, ValueError, IndexError):
            continue
    return out


def netns_descriptors() -> list[str]:
    """Network namespaces this process holds open (private networks not yet closed)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("net:["):
            out.append(target)
    return out


def answer_each(server: socket.socket, reply: bytes) -> None:
    """Sends ``reply`` on each connection ``server`` accepts, in a thread of its own, until the
    server is closed (or its accept times out)."""

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()


def port_links() -> list[str]:
    """What pyrt's kernel path of published ports puts on the host: the host's ends of its
    links (``pyrtpN``), and any nftables table of pyrt's (``pyrt_PID_...``) whose process is
    gone (a live process's table goes when it exits)."""
    out = [n for _, n in socket.if_nameindex() if n.startswith("pyrtp")]
    nft = shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if nft is not None:
        listing = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
        for line in listing.splitlines():
            name = line.rpartition(" ")[2]
            pid = name.split("_")[1] if name.startswith("pyrt_") else ""
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                out.append(name)
    return out


def state_entries() -> list[str]:
    from pyrt.host.places import state_root, store_root

    out = []
    for d in (state_root() / "containers", store_root() / "tmp"):
        if d.is_dir():
            out += [str(d / e) for e in os.listdir(d)]
    return out


def trash_entries() -> list[str]:
    """What the helpers have still to delete: removed containers' directories and resets' old
    layers, handed to the trash (a moment's work each)."""
    from pyrt.host.reaper import trash_root

    d = trash_root()
    return [str(d / e) for e in os.listdir(d)] if d.is_dir() else []


def snapshot() -> dict[str, object]:
    return {
        "mounts": pyrt_mounts(),
        "cgroups": pyrt_cgroups(),
        "processes": foreign_pidns_processes() | helper_processes(),
        "netns": netns_descriptors(),
        "state": state_entries(),
        "trash": trash_entries(),
        "port links": port_links(),
    }


def new_since(before: dict[str, object]) -> dict[str, list[object]]:
    """What ``snapshot()`` holds now that it did not hold at ``before``, by kind (only the kinds
    with something new). Not an equality: what was on its way out at ``before`` (a previous
    test's directory in the trash, a reaper ending) may be gone by now, which is no leak."""
    now = snapshot()
    new = {k: [x for x in now[k] if x not in before[k]] for k in now}  # type: ignore[attr-defined,operator]
    return {k: v for k, v in new.items() if v}


# --- after an owner's death ---------------------------------------------------------------


def what_is_left_of(cid: str) -> list[str]:
    """Everything of container ``cid`` that its owner's death must not leave behind."""
    from pyrt.host.reaper import trash_root
    from pyrt.host.state import containers_root

    left = [str(containers_root() / cid)] if (containers_root() / cid).exists() else []
    # Its directory, or a reset's old layer ("ID.layer.N"), handed to the helper's trash.
    if trash_root().is_dir():
        left += [str(trash_root() / e) for e in os.listdir(trash_root()) if e.startswith(cid)]
    left += [c for c in pyrt_cgroups() if cid in c]
    left += [m for m in pyrt_mounts() if cid in m]
    left += [f"reaper {r}" for r in orphan_reapers()]
    return left


def orphan_reapers() -> list[int]:
    return sorted(helper_processes("pyrt-reaper"))


def assert_nothing_left_of(cid: str, within: float = 2.0) -> None:
    """Within ``within`` seconds of the owner's death (the contract's promise), with no pyrt
    call in between: no state directory, cgroup, mount or helper of the container remains."""
    deadline = time.monotonic() + within
    while (left := what_is_left_of(cid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"{within} s after its owner died, container {cid} left {left}"


def exec_servers() -> dict[int, int]:
    """This process's exec servers (pid: their parent's pid, ours)."""
    out = {}
    for e in os.listdir("/proc"):
        try:
            if e.isdigit() and Path(f"/proc/{e}/comm").read_text().strip() == "pyrt-exec":
                ppid = int(Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == os.getpid():
                    out[int(e)] = ppid
        except (OSError, ValueError, IndexError):
            continue
    return out


@contextlib.contextmanager
def small_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs of ``options`` ("size=1m", "nr_inodes=40") mounted at ``path`` (made) for the
    block: a disk that fills up. Root only."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def settles(cond: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``cond`` holds within ``seconds``: for what pyrt finishes on a thread of its own
    (a teardown thread's join, an exec server's join, a descriptor's close)."""
    end = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True
