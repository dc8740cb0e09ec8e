"""User namespaces for rootless containers: which ids map where, and what cannot work.

Without subordinate ids, the caller's uid and gid are 0 inside and nothing else is mapped. With
an entry for the caller in /etc/subuid and /etc/subgid (and Debian's newuidmap/newgidmap), ids
1.. inside map to that range, so that images with files of other owners work, as rootless
podman does it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pyrt.errors import PyrtError
from pyrt.host import trees

Ranges = tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class IdMaps:
    uid: Ranges
    gid: Ranges


def _subids(path: str, name: str, ident: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(ident)) and parts[2].isdigit():
                    return int(parts[1]), int(parts[2])
    except OSError:
        return None
    return None


#: The range a root caller's sandboxed containers map to when /etc/subuid and /etc/subgid have
#: no ``containers`` entry (podman's name for --userns=auto): ids nobody on a host uses.
SANDBOX_BASE = 0x70000000
SANDBOX_SIZE = 65536


def sandbox_range() -> tuple[int, int, int, int]:
    """(uid base, uid count, gid base, gid count) of the range a root caller's rootless=True
    and host-image containers map to: ``containers`` in /etc/subuid and /etc/subgid when
    present (at most 65536 ids of it), else pyrt's reserved one."""
    u = _subids("/etc/subuid", "containers", -1)
    g = _subids("/etc/subgid", "containers", -1)
    if u and g:
        return u[0], min(u[1], SANDBOX_SIZE), g[0], min(g[1], SANDBOX_SIZE)
    return SANDBOX_BASE, SANDBOX_SIZE, SANDBOX_BASE, SANDBOX_SIZE


def maps_for_caller() -> IdMaps:
    """The caller as 0 inside; with subordinate ranges (and the helpers to use them), ids 1..N
    mapped to the caller's range. Root's containers map to an unprivileged range instead
    (``sandbox_range``): mapping 0 to 0 would leave them the host's root."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        ub, un, gb, gn = sandbox_range()
        return IdMaps(((0, ub, un),), ((0, gb, gn),))
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    sub_u = _subids("/etc/subuid", name, uid)
    sub_g = _subids("/etc/subgid", name, uid)
    helpers = shutil.which("newuidmap") and shutil.which("newgidmap")
    if uid != 0 and sub_u and sub_g and helpers:
        return IdMaps(
            ((0, uid, 1), (1, sub_u[0], sub_u[1])), ((0, gid, 1), (1, sub_g[0], sub_g[1]))
        )
    return IdMaps(((0, uid, 1),), ((0, gid, 1),))


def check_limits_possible() -> None:
    """Limits need a cgroup the caller may write: refused, naming what is missing."""
    raise PyrtError(
        "limits (memory, pids_limit, cpus) in a rootless container need a cgroup v2 subtree "
        "delegated to this user (systemd: a user session with Delegate=yes, on a unified "
        "cgroup hierarchy); this machine gives none, and pyrt does not run unlimited silently"
    )


def _mapped(ident: int, ranges: Ranges) -> bool:
    return any(inside <= ident < inside + n for inside, _, n in ranges)


def fit(ids: Any, maps: IdMaps) -> Any:
    """The user's ids as the namespace can have them: supplementary groups that are not mapped
    are left out (they would mean nothing inside); an unmapped uid or gid is an error."""
    for what, ident, ranges in (("uid", ids.uid, maps.uid), ("gid", ids.gid, maps.gid)):
        if not _mapped(ident, ranges):
            raise PyrtError(
                f"{what} {ident} does not exist in this rootless container's user namespace: "
                "without subordinate ids (an entry for the caller in /etc/subuid and "
                "/etc/subgid, and Debian's uidmap), only root (the caller) is mapped"
            )
    # One gid mapped by the caller itself means setgroups is "deny": no groups can be set.
    own_gid_only = len(maps.gid) == 1 and maps.gid[0][2] == 1 and os.geteuid() != 0
    extra = () if own_gid_only else tuple(g for g in ids.additional_gids if _mapped(g, maps.gid))
    return replace(ids, additional_gids=extra)


def _read(path: str, proc: str = "/proc") -> str:
    try:
        with open(proc + path.removeprefix("/proc")) as f:
            return f.read().strip()
    except OSError:
        return ""


def blocked_because(proc: str = "/proc") -> str | None:
    """Why this machine refuses user namespaces to this user, with how to allow them; None when
    nothing known blocks them."""
    if _read("/proc/sys/user/max_user_namespaces", proc) == "0":
        return (
            "user namespaces are disabled (sysctl user.max_user_namespaces = 0); allow them "
            "with: sudo sysctl -w user.max_user_namespaces=15000"
        )
    if _read("/proc/sys/kernel/unprivileged_userns_clone", proc) == "0":
        return (
            "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone "
            "= 0); allow them with: sudo sysctl -w kernel.unprivileged_userns_clone=1"
        )
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", proc) == "1":
        return (
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10 and later: sysctl "
            "kernel.apparmor_restrict_unprivileged_userns = 1); allow them with an AppArmor "
            "profile granting 'userns' to this Python, or: sudo sysctl -w "
            "kernel.apparmor_restrict_unprivileged_userns=0"
        )
    return None


def has_range() -> bool:
    """Whether pyrt maps a subordinate range for this caller (not root, with /etc/subuid and
    /etc/subgid entries and the helpers): then files may belong to ids other than the caller's,
    and only the mapped namespace (``in_mapped_namespace``) may set or delete them."""
    return os.geteuid() != 0 and len(maps_for_caller().uid) > 1


def in_mapped_namespace(
    work: Callable[[int], Any], feed: Callable[[int], None] | None = None
) -> Any:
    """Runs ``work(data_fd)`` in a forked child inside a user namespace mapped as rootless
    containers are (the caller as 0, its range from 1), where it is root and the range's ids
    exist; ``feed(fd)``, in the parent, writes what the child reads from ``data_fd``. Returns
    ``work``'s (JSON-able) result, or raises its PyrtError (its class and message kept).

    Forked rather than executed: the interpreter may live where the namespace's root cannot
    reach (e.g. under /root), and the parent's imports are already there."""
    from pyrt import errors

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    data_r, data_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through res_w
        answer: dict[str, Any]
        try:
            for fd in (ready_r, go_w, data_w, res_r):
                os.close(fd)
            unshare_user()
            os.write(ready_w, b"1")
            os.read(go_r, 1)
            answer = {"ok": work(data_r)}
        except errors.PyrtError as e:
            answer = {"error": type(e).__name__, "message": str(e)}
        except BaseException as e:
            answer = {"error": "PyrtError", "message": f"in the mapped user namespace: {e}"}
        try:
            os.write(res_w, json.dumps(answer).encode())
        finally:
            os._exit(0)
    for fd in (ready_w, go_r, data_r, res_w):
        os.close(fd)
    try:
        if os.read(ready_r, 1) == b"1":
            write_maps(pid)
            os.write(go_w, b"1")
            if feed is not None:
                # A child that stopped early closes its end: its answer says why.
                with contextlib.suppress(BrokenPipeError):
                    feed(data_w)
    finally:
        for fd in (ready_r, go_w, data_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with os.fdopen(res_r, "rb") as res:
            raw = res.read()
        os.waitpid(pid, 0)
    try:
        answer = json.loads(raw)
    except ValueError:
        raise PyrtError("the helper in the mapped user namespace died without a word") from None
    if "error" in answer:
        cls = getattr(errors, answer["error"], PyrtError)
        raise cls(answer["message"])
    return answer["ok"]


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Deletes a tree pyrt made, including what a rootless container's processes wrote into it
    as other users (files owned by the caller's subordinate ids, which only a process in the
    mapped user namespace may delete)."""
    trees.rmtree(path)
    if os.path.lexists(path) and has_range():
        in_mapped_namespace(lambda _fd: trees.rmtree(path))


def unshare_user() -> None:
    """unshare(CLONE_NEWUSER) for the calling (single-threaded, forked) process."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_maps(pid: int) -> None:
    """Maps process ``pid``'s new user namespace as rootless containers' are (a subordinate
    range, through newuidmap and newgidmap)."""
    import subprocess

    maps = maps_for_caller()
    for tool, ranges in (("newuidmap", maps.uid), ("newgidmap", maps.gid)):
        args = [str(x) for r in ranges for x in r]
        r = subprocess.run([tool, str(pid), *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise PyrtError(f"{tool} refused the map: {r.stderr.strip()}")


def host_id(ranges: Sequence[tuple[int, int, int]], inside: int) -> int:
    """The host id that ``inside`` maps to."""
    for i, o, n in ranges:
        if i <= inside < i + n:
            return o + inside - i
    raise PyrtError(f"id {inside} is not mapped in the container's user namespace")


def id_inside(ranges: Sequence[tuple[int, int, int]], outside: int) -> int:
    """The id inside the user namespace that the host id ``outside`` is (nobody if none)."""
    for i, o, n in ranges:
        if o <= outside < o + n:
            return i + outside - o
    return 65534
