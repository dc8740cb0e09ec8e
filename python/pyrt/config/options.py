"""Typed, validated container options: the one place a value a caller passes is checked.

Every public entry point (``Container``, ``run``, ``Pool``, the CLI) builds its options here
before anything is started (see ``checks`` for the single values)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from pyrt.config.checks import show
from pyrt.config.mounts import Bind, Mount, Tmpfs
from pyrt.errors import InvalidOption, PyrtError
from pyrt.oci.spec import Limits


def mounts(value: object) -> tuple[Mount, ...]:
    if isinstance(value, (Bind, Tmpfs)):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"mounts must be a list of pyrt.Bind or pyrt.Tmpfs, not {show(value)}")
    for m in value:
        if not isinstance(m, (Bind, Tmpfs)):
            raise TypeError(f"mounts must be pyrt.Bind or pyrt.Tmpfs, not {show(m)}")
        m.to_spec()  # checks sizes and paths
    return tuple(value)


#: The least memory a container's setup and a shell need.
MIN_MEMORY = 6 << 20


def limits(memory: object, pids_limit: object, cpus: object) -> Optional[Limits]:
    """Validated cgroup limits, or None; a limit that cannot be applied is an error, never
    silently ignored."""
    from pyrt.config.sizes import parse_size

    mem = None
    if memory is not None:
        if isinstance(memory, bool) or not isinstance(memory, (int, str)):
            raise TypeError(f"memory must be bytes (int) or a size like '256m', not {show(memory)}")
        mem = parse_size(memory, "memory")
        if mem < MIN_MEMORY:
            raise PyrtError(f"memory={memory!r}: below the minimum of 6 MiB a container needs")
        if mem >= 1 << 62:
            raise InvalidOption(f"memory={memory!r}: larger than any machine's memory")
    pids = None
    if pids_limit is not None:
        if isinstance(pids_limit, bool) or not isinstance(pids_limit, int):
            raise TypeError(f"pids_limit must be a whole number, not {show(pids_limit)}")
        if not 1 <= pids_limit <= 1 << 22:
            raise PyrtError(f"pids_limit={pids_limit!r}: must be a whole number of at least 1")
        pids = pids_limit
    ncpus = None
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)):
            raise TypeError(f"cpus must be a number, not {show(cpus)}")
        n = os.cpu_count() or 1
        if not 0.01 <= cpus <= n:  # NaN fails this too
            raise PyrtError(f"cpus={cpus!r}: must be between 0.01 and {n}, the CPUs there are")
        ncpus = float(cpus)
    if mem is None and pids is None and ncpus is None:
        return None
    return Limits(mem, pids, ncpus)


#: The least a writable layer can be: overlayfs's work directory and a few files.
MIN_DISK = 1 << 20


def disk(value: object, image_kind: str) -> Optional[int]:
    """The size in bytes of a size-bounded writable layer (``disk="1g"``), or None; refused
    where pyrt cannot enforce it (see ``disklayer``)."""
    if value is None:
        return None
    from pyrt.config.sizes import parse_size
    from pyrt.image.image import overlay_supported

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"disk must be bytes (int) or a size like '1g', not {show(value)}")
    size = parse_size(value, "disk")
    if size < MIN_DISK:
        raise InvalidOption(f"disk={value!r}: below the minimum of 1 MiB a writable layer needs")
    if size >= 1 << 62:
        raise InvalidOption(f"disk={value!r}: larger than any machine's memory (the layer is "
                            "a tmpfs)")  # fmt: skip
    if image_kind == "host":
        raise InvalidOption(
            f"disk={value!r}: a container of the host image has no writable layer (its root is "
            "the host's, read-only); bound its scratch space with mounts=[pyrt.Tmpfs(path, "
            "size=...)]"
        )
    if not overlay_supported():
        raise InvalidOption(
            f"disk={value!r}: needs overlayfs (the kernel has none, or PYRT_NO_OVERLAY=1): "
            "without it the writable layer is a copy of the whole image"
        )
    if os.geteuid() != 0:
        raise InvalidOption(
            f"disk={value!r}: needs root: the bound is a tmpfs that pyrt mounts under the "
            "container's directory on the host, which an unprivileged user cannot do; bound a "
            "scratch directory instead with mounts=[pyrt.Tmpfs(path, size=...)]"
        )
    return size


#: What ``run`` and ``exec`` keep of each captured stream unless told otherwise (bytes): more
#: than any test reads from a pipe, and a bound on the memory of a process that writes without
#: end (`yes`), which would otherwise fill the caller's before anything else stopped it. (What
#: is kept is copied once as the core hands it to Python: about twice this at the peak.)
OUTPUT_LIMIT = 1 << 30


def output_limit(value: object) -> Optional[int]:
    """The bound on each captured output of ``run`` and ``exec`` in bytes (``"64m"`` too), or
    None for none."""
    if value is None:
        return None
    from pyrt.config.sizes import parse_size

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"output_limit must be bytes (int), a size like '64m' or None, not {show(value)}"
        )
    size = parse_size(value, "output_limit")
    if size < 1:
        raise InvalidOption(f"output_limit={value!r}: must be at least one byte (or None)")
    if size >= 1 << 62:
        raise InvalidOption(f"output_limit={value!r}: larger than any machine's memory")
    return size


@dataclass(frozen=True)
class ContainerOptions:
    """Everything about a container but its image and command, checked once."""

    env: Mapping[str, str] = field(default_factory=dict)
    workdir: Optional[str] = None
    user: Optional[str] = None
    hostname: Optional[str] = None
    name: Optional[str] = None
    mounts: tuple[Mount, ...] = ()
    readonly_rootfs: bool = False
    network: str = "none"
    aliases: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    init: bool = False
    tty: bool = False
    limits: Optional[Limits] = None
    #: Bytes of the writable layer, when bounded.
    disk: Optional[int] = None
    #: Bytes kept of each captured output of run and exec (None: no bound).
    output_limit: Optional[int] = OUTPUT_LIMIT
