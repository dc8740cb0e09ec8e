"""User namespaces for rootless containers: which ids map where, and what cannot work.

Without subordinate ids, the caller's uid and gid are 0 inside and nothing else is mapped. With
an entry for the caller in /etc/subuid and /etc/subgid (and Debian's newuidmap/newgidmap), ids
1.. inside map to that range, so that images with files of other owners work, as rootless
podman does it.
"""

from __future__ import annotations

import os
import pwd
import shutil
from dataclasses import dataclass, replace
from typing import Any

from .errors import PyrtError

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


def maps_for_caller() -> IdMaps:
    """The caller as 0 inside; with subordinate ranges (and the helpers to use them), ids 1..N
    mapped to the caller's range."""
    uid, gid = os.geteuid(), os.getegid()
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
