"""Mounts a container gets besides its image: host directories and scratch filesystems."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from pyrt.config.sizes import Size, parse_size
from pyrt.host import kernel


@dataclass(frozen=True)
class Bind:
    """A host path bound into the container at ``target``; a missing target is created inside
    the container's root, never outside it. ``readonly`` holds for the mounts below ``source``
    too (on Linux 5.12 and later)."""

    source: Union[str, os.PathLike[str]]
    target: Union[str, os.PathLike[str]]
    readonly: bool = False

    def __post_init__(self) -> None:
        # Paths are checked when the mount is made, so a mistake points at the Bind(...) line.
        from pyrt.config.checks import container_path, flag, host_path

        object.__setattr__(self, "source", host_path(self.source, "Bind.source"))
        object.__setattr__(self, "target", container_path(self.target, "Bind.target"))
        flag(self.readonly, "Bind.readonly")

    def to_spec(self) -> dict[str, object]:
        opts = ["rbind", "ro" if self.readonly else "rw", "nosuid", "nodev", "rprivate"]
        if self.readonly and kernel.at_least(5, 12):  # (mount_setattr's AT_RECURSIVE)
            # Read-only all the way down: "ro" alone leaves the mounts below the source
            # writable (a tmpfs under a bound /home, the host's /tmp under a bound /), as
            # Docker before 25 did.
            opts.append("rro")
        return {
            "destination": self.target,
            "type": "bind",
            "source": os.path.abspath(os.fspath(self.source)),
            "options": opts,
        }


@dataclass(frozen=True)
class Tmpfs:
    """A fresh tmpfs at ``target``, of at most ``size`` bytes (int or "64m") when given."""

    target: Union[str, os.PathLike[str]]
    size: Optional[Size] = None
    mode: int = 0o1777

    def __post_init__(self) -> None:
        from pyrt.config.checks import container_path, whole

        object.__setattr__(self, "target", container_path(self.target, "Tmpfs.target"))
        whole(self.mode, "Tmpfs.mode", 0, 0o7777)
        size = None if self.size is None else parse_size(self.size, f"Tmpfs({self.target!r}).size")
        if size == 0:
            from pyrt.errors import InvalidOption

            # The kernel reads size=0 as no limit at all: never what a 0 meant.
            raise InvalidOption(
                f"Tmpfs({self.target!r}).size=0: a tmpfs needs a size of at least one page, "
                "or None for the default (half of RAM)"
            )
        if size is not None and size >= 1 << 62:
            from pyrt.errors import InvalidOption

            # Past 2^64 the kernel's parser wraps around, to 0 (no limit) or to a small size.
            raise InvalidOption(
                f"Tmpfs({self.target!r}).size={self.size!r}: larger than any machine's memory"
            )

    def to_spec(self) -> dict[str, object]:
        opts = ["nosuid", "nodev", f"mode={self.mode:o}"]
        if self.size is not None:
            opts.append(f"size={parse_size(self.size, f'Tmpfs({self.target!r}).size')}")
        return {"destination": self.target, "type": "tmpfs", "source": "tmpfs", "options": opts}


Mount = Union[Bind, Tmpfs]
