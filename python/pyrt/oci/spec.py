"""Pure, typed builders of the OCI runtime spec (config.json as a dict).

Python decides *what* a container is; the Rust core only carries the spec out. Nothing here
touches the system: the same inputs always give the same spec, so it can be tested exhaustively.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from pyrt.config.users import UserIds
from pyrt.errors import InvalidOption

OCI_VERSION = "1.2.0"

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: containerd 2.0's default set for an unprivileged container (the contract's list).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
)

#: Every capability the kernel knows today (CAP_LAST_CAP = 40, CAP_CHECKPOINT_RESTORE).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

#: Docker's default masked paths: hidden (an empty read-only tmpfs, or /dev/null for files).
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

#: Docker's default read-only paths.
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

#: `runc spec`'s rlimits: 1024 open files, no core dumps.
DEFAULT_RLIMITS: tuple[tuple[str, int, int], ...] = (
    ("RLIMIT_NOFILE", 1024, 1024),
    ("RLIMIT_CORE", 0, 0),
)

NETWORK_MODES = ("none", "host", "private")

ANNOTATION_OVERLAY = "run.pyrt.rootfs.overlay"
ANNOTATION_ROOT_BIND = "run.pyrt.rootfs.bind"


def normalize_capability(name: str) -> str:
    """ "net_admin", "NET_ADMIN" and "CAP_NET_ADMIN" all name CAP_NET_ADMIN; unknown names fail."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"not a capability name: {name!r}")
    n = name.strip().upper()
    if n == "ALL":
        return n
    if not n.startswith("CAP_"):
        n = "CAP_" + n
    if n not in ALL_CAPABILITIES:
        raise ValueError(f"unknown capability: {name!r}")
    return n


def capability_set(
    cap_add: Iterable[str] = (), cap_drop: Iterable[str] = (), privileged: bool = False
) -> list[str]:
    """The default set, plus ``cap_add``, minus ``cap_drop`` ("ALL" works in both, as Docker's)."""
    adds = [normalize_capability(c) for c in cap_add]
    drops = [normalize_capability(c) for c in cap_drop]
    caps: set[str] = set(ALL_CAPABILITIES if privileged else DEFAULT_CAPABILITIES)
    if "ALL" in drops:
        caps = set()
    caps -= {d for d in drops if d != "ALL"}
    if "ALL" in adds:
        caps |= set(ALL_CAPABILITIES)
    caps |= {a for a in adds if a != "ALL"}
    return sorted(caps, key=ALL_CAPABILITIES.index)


def default_mounts(
    *, sysfs_readonly: bool = True, rootless: bool = False, foreign_netns: bool = False
) -> list[dict[str, Any]]:
    """/proc, a fresh /dev with /dev/pts, /dev/shm and /dev/mqueue, and /sys, as `runc spec`.
    In a user namespace: devpts without gid=5 (not mapped there) and no cgroup mount (cgroupfs
    v1 cannot be mounted from a user namespace), as `runc spec --rootless`; with a network
    namespace it does not own too (the host's, or another container's it joins), the host's
    /sys bound read-only (a sysfs may only be mounted by the owner of the network namespace)."""
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev"] + (["ro"] if sysfs_readonly else [])},
        # The host's cgroup layout, read-only, through the container's cgroup namespace.
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]  # fmt: skip
    if rootless:
        mounts[2]["options"] = [o for o in mounts[2]["options"] if o != "gid=5"]
        mounts = mounts[:-1]
        if foreign_netns:
            mounts[-1] = {"destination": "/sys", "type": "bind", "source": "/sys",
                          "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}  # fmt: skip
    return mounts


def merge_env(*layers: Optional[Mapping[str, str]]) -> list[str]:
    """KEY=VALUE strings, later layers winning, first-seen order kept (as Docker merges Env)."""
    merged: dict[str, str] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise ValueError(f"invalid environment variable name: {k!r}")
            if not isinstance(v, str) or "\0" in v:
                raise ValueError(f"environment variable {k}: value must be a str without NUL")
            merged[k] = v
    return [f"{k}={v}" for k, v in merged.items()]


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means unlimited."""

    memory: Optional[int] = None
    pids: Optional[int] = None
    cpus: Optional[float] = None

    def to_spec(self) -> dict[str, Any]:
        r: dict[str, Any] = {}
        if self.memory is not None:
            # Swap is capped to the memory limit: a container cannot page its way past it.
            r["memory"] = {"limit": self.memory, "swap": self.memory}
        if self.pids is not None:
            r["pids"] = {"limit": self.pids}
        if self.cpus is not None:
            period = 100_000
            r["cpu"] = {"quota": round(self.cpus * period), "period": period}
        return r


@dataclass(frozen=True)
class RootSpec:
    """Where the container's root comes from.

    ``path`` is the directory the root is mounted on. With ``lower`` (topmost first), ``upper``
    and ``work`` it is an overlay (with ``scratch`` instead of the two, one whose writable
    layer is a tmpfs of the container's own); with ``bind`` a recursive bind of that host
    directory; otherwise ``path`` itself is the root.
    """

    path: str
    readonly: bool = False
    lower: tuple[str, ...] = ()
    upper: Optional[str] = None
    work: Optional[str] = None
    bind: Optional[str] = None
    scratch: bool = False


@dataclass(frozen=True)
class ProcessSpec:
    args: Sequence[str]
    env: Sequence[str] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: Sequence[int] = ()
    capabilities: Sequence[str] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = True
    rlimits: Sequence[tuple[str, int, int]] = DEFAULT_RLIMITS
    umask: Optional[int] = 0o022
    terminal: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    root: RootSpec
    process: ProcessSpec
    hostname: Optional[str] = None
    network: str = "none"
    #: A network namespace to join (a private network, or another container's) instead.
    netns_path: Optional[str] = None
    #: A user namespace with these (inside, outside, count) uid and gid ranges.
    uid_map: Sequence[tuple[int, int, int]] = ()
    gid_map: Sequence[tuple[int, int, int]] = ()
    #: ... joined at this path instead of made (a rootless network's, which has those maps).
    userns_path: Optional[str] = None
    mounts: Sequence[Mapping[str, Any]] = ()
    masked_paths: Sequence[str] = DEFAULT_MASKED_PATHS
    readonly_paths: Sequence[str] = DEFAULT_READONLY_PATHS
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: A cgroup of its own (relative: below the caller's cgroup), with these limits.
    cgroups_path: Optional[str] = None
    resources: Optional[Limits] = None
    #: An OCI linux.seccomp object (pyrt.seccomp.default_profile), or None for no filter.
    seccomp: Optional[Mapping[str, Any]] = None


def process_dict(p: ProcessSpec) -> dict[str, Any]:
    if not p.args:
        raise ValueError("no command: the image has no Entrypoint or Cmd and none was given")
    for a in p.args:
        if not isinstance(a, str):
            raise TypeError(f"command arguments must be str, not {type(a).__name__}: {a!r}")
    if not p.cwd.startswith("/"):
        raise ValueError(f"workdir must be an absolute path: {p.cwd!r}")
    caps = list(p.capabilities)
    # A non-root user starts with nothing effective or permitted, as after a login; the bounding
    # set still allows a setuid binary (when no_new_privileges is off) to gain what it holds.
    active = caps if p.uid == 0 else []
    proc: dict[str, Any] = {
        "terminal": p.terminal,
        "user": {"uid": p.uid, "gid": p.gid},
        "args": list(p.args),
        "env": list(p.env),
        "cwd": p.cwd,
        "capabilities": {
            "bounding": caps,
            "effective": active,
            "permitted": active,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": [{"type": t, "soft": s, "hard": h} for t, s, h in p.rlimits],
        "noNewPrivileges": p.no_new_privileges,
    }
    if p.additional_gids:
        proc["user"]["additionalGids"] = list(p.additional_gids)
    if p.umask is not None:
        proc["user"]["umask"] = p.umask
    return proc


def exec_process(
    base: Mapping[str, Any],
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    ids: Optional[UserIds] = None,
    cwd: Optional[str] = None,
) -> dict[str, Any]:
    """The process of an exec: the container's own (``base``, its spec's ``process``) with
    ``args``, ``env`` laid over its environment, in ``cwd``, and as ``ids`` when given (with
    its additional groups and HOME; capabilities effective only for uid 0, as at a login).
    What is not said stays the container's: rlimits, umask, no_new_privileges, the bounding
    set. Not its terminal: an exec's stdio are the caller's pipes or files, as ``docker exec``
    without ``-t`` (a container's console is its first process's). The one builder of an
    exec's process, for ``Container.exec`` and `pyrt exec`."""
    proc: dict[str, Any] = json.loads(json.dumps(dict(base)))  # (a deep copy of JSON data)
    proc["args"] = list(args)
    proc["terminal"] = False
    proc.pop("consoleSize", None)
    if cwd is not None:
        if not cwd.startswith("/"):
            raise InvalidOption(f"workdir must be an absolute path: {cwd!r}")
        proc["cwd"] = cwd
    current = dict(kv.split("=", 1) for kv in proc.get("env") or [] if "=" in kv)
    if ids is not None:
        user = proc.setdefault("user", {})
        user.update(uid=ids.uid, gid=ids.gid)
        user.pop("additionalGids", None)
        if ids.additional_gids:
            user["additionalGids"] = list(ids.additional_gids)
        env = {"HOME": ids.home, **(env or {})}
        caps = proc.setdefault("capabilities", {})
        active = list(caps.get("bounding") or []) if ids.uid == 0 else []
        caps.update(effective=active, permitted=active)
    proc["env"] = merge_env(current, env)
    return proc


def build(c: ContainerSpec) -> dict[str, Any]:
    """The OCI runtime spec for ``c``."""
    if c.network not in NETWORK_MODES:
        raise ValueError(f"network must be one of {', '.join(NETWORK_MODES)}: {c.network!r}")
    namespaces = [{"type": t} for t in ("pid", "mount", "ipc", "uts", "cgroup")]
    if c.netns_path is not None:
        namespaces.append({"type": "network", "path": c.netns_path})
    elif c.network == "none":
        namespaces.append({"type": "network"})
    annotations = dict(c.annotations)
    r = c.root
    if r.lower:
        ov: dict[str, Any] = {"lower": list(r.lower)}
        if r.scratch:
            ov["scratch"] = True
        elif r.upper and r.work:
            ov.update(upper=r.upper, work=r.work)
        else:
            raise ValueError("an overlay root needs upper and work directories, or scratch")
        if c.uid_map:
            # In a user namespace overlayfs reads its markers from user.* xattrs (the store's
            # layers were unpacked rootless with those).
            ov["userxattr"] = True
        annotations[ANNOTATION_OVERLAY] = json.dumps(ov)
    elif r.bind:
        annotations[ANNOTATION_ROOT_BIND] = r.bind
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "root": {"path": r.path, "readonly": r.readonly},
        "process": process_dict(c.process),
        "mounts": default_mounts(
            sysfs_readonly=True,
            rootless=bool(c.uid_map),
            foreign_netns=c.network == "host" or bool(c.netns_path),
        )
        + [dict(m) for m in c.mounts],
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": list(c.masked_paths),
            "readonlyPaths": list(c.readonly_paths),
        },
    }
    if c.uid_map and c.userns_path:
        namespaces.insert(0, {"type": "user", "path": c.userns_path})
    elif c.uid_map:
        namespaces.insert(0, {"type": "user"})

        def ranges(m: Sequence[tuple[int, int, int]]) -> list[dict[str, int]]:
            return [{"containerID": i, "hostID": o, "size": n} for i, o, n in m]

        spec["linux"]["uidMappings"] = ranges(c.uid_map)
        spec["linux"]["gidMappings"] = ranges(c.gid_map or c.uid_map)
    if c.hostname:
        spec["hostname"] = c.hostname
    if c.seccomp is not None:
        spec["linux"]["seccomp"] = c.seccomp
    if c.cgroups_path:
        spec["linux"]["cgroupsPath"] = c.cgroups_path
        if c.resources is not None:
            spec["linux"]["resources"] = c.resources.to_spec()
    if annotations:
        spec["annotations"] = annotations
    return spec
