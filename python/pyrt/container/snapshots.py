"""Snapshots of a running container: ``commit`` (a new image of what it changed) and
``reset`` (back to the image, started again with the same identity); a base class of
``pyrt.Container``."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Optional, TypeVar

from pyrt import _core
from pyrt.config import checks, options
from pyrt.container.spawning import Replaced, end_killed
from pyrt.errors import PyrtError, state_error
from pyrt.host import userns
from pyrt.image import Image
from pyrt.image.config import ImageConfig
from pyrt.image.image import overlay_supported
from pyrt.network.private import PrivateNetwork

if TYPE_CHECKING:
    from pyrt.container.health import Checker
    from pyrt.host.state import ContainerDir
    from pyrt.host.userns import IdMaps
    from pyrt.network.shared import Member


_C = TypeVar("_C", bound="ContainerSnapshots")


class ContainerSnapshots:
    """The commit and reset methods of ``pyrt.Container``."""

    if TYPE_CHECKING:
        id: str
        image: Image
        _o: options.ContainerOptions
        _command: Optional[list[str]]
        _entrypoint: Optional[list[str]]
        _proc: Optional[_core.Process]
        _returncode: Optional[int]
        _removed: bool
        _lock: threading.Lock
        _checker: Optional[Checker]
        _net: Optional[PrivateNetwork | Member]
        _ports: list[tuple[int, str, str, int]]
        _userns: Optional[IdMaps]
        _dir: Optional[ContainerDir]

        @property
        def status(self) -> str: ...
        def _freeze(self, proc: _core.Process, what: str) -> bool: ...
        def _thaw(self) -> None: ...
        def _ensure_dir(self) -> ContainerDir: ...
        def _spawn_detached(
            self, replaced: Optional[Replaced] = None, serve: bool = False
        ) -> None: ...
        def _stop_server(self) -> Optional[_core.ExecServer]: ...
        def _start_checker(self) -> None: ...

    def _config(self) -> ImageConfig:
        """The image config this container runs with (for commit)."""
        base = self.image.config
        ep: Optional[list[str]]
        cmd: Optional[list[str]]
        if self._entrypoint is not None:
            ep, cmd = self._entrypoint, self._command or []
        else:
            ep = base.entrypoint
            cmd = self._command if self._command is not None else base.cmd
        return dataclasses.replace(
            base,
            entrypoint=list(ep) if ep else None,
            cmd=list(cmd) if cmd else None,
            env={**base.env, **self._o.env},
            workdir=self._o.workdir or base.workdir,
            user=self._o.user or base.user,
        )

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """The container's processes frozen (cgroup freezer) while its layer is read, so that a
        commit of a running container is one consistent moment."""
        proc = self._proc
        if proc is None or self.status != "running":
            yield  # not running, or paused: nothing moves
            return
        froze = self._freeze(proc, "commit")
        try:
            yield
        finally:
            if froze:
                proc.thaw()

    def commit(
        self,
        tag: Optional[str] = None,
        command: Optional[Sequence[str]] = None,
        entrypoint: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        workdir: Optional[str] = None,
        user: Optional[str] = None,
    ) -> Image:
        """A new image: this container's image plus one layer holding what the container
        changed (deletions as OCI whiteouts), with the container's config and the given fields
        replaced (``env`` is added to). A running container is frozen while its layer is read."""
        if tag is not None:
            checks.text(tag, "tag")
        changes = {
            "cmd": None if command is None else checks.args(command, "command", empty_ok=True),
            "entrypoint": (
                None if entrypoint is None else checks.args(entrypoint, "entrypoint", empty_ok=True)
            ),
            "env": checks.env(env),
            "workdir": None if workdir is None else checks.container_path(workdir, "workdir"),
            "user": checks.user(user),
        }
        if self._removed:
            raise PyrtError(f"container {self.id[:12]} was removed")
        if self.image.kind != "host" and not overlay_supported():
            raise PyrtError("commit needs overlayfs (the kernel has none, or PYRT_NO_OVERLAY=1)")
        d = self._ensure_dir()
        from pyrt.rootfs import snapshot  # (when used: it brings tarfile, 4 ms of an import)

        cfg = snapshot.merged_config(self._config(), changes)
        remap = None
        if self._userns is not None:
            maps = self._userns
            remap = lambda u, g: (userns.id_inside(maps.uid, u), userns.id_inside(maps.gid, g))  # noqa: E731
        with self._frozen():
            return snapshot.commit(self.image, str(d.upper), cfg, tag,
                                   f"container {self.id[:12]}", remap,
                                   self._mount_points())  # fmt: skip

    def _mount_points(self) -> frozenset[str]:
        """Where this container's mounts made files or directories the image does not have
        (its /etc/hosts and resolv.conf on a network, its Bind and Tmpfs targets): commit leaves
        them out when they are still empty, as Docker does."""
        from pyrt.image import merged

        targets = {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}
        targets |= {str(m.to_spec()["destination"]) for m in self._o.mounts}
        return frozenset(t.strip("/") for t in targets if merged.kind(self.image.lower, t) is None)

    def reset(self: _C) -> _C:
        """Every process killed, the root back to the image exactly (a fresh writable layer),
        and the command started again, with the same id, name, network, address and published
        ports. Returns the container, running."""
        return self._reset(serve=False)

    def _reset(self: _C, serve: bool) -> _C:
        """``reset``; with ``serve`` (a pool's), the exec server started with the container."""
        with self._lock:
            if self._removed:
                raise PyrtError(f"container {self.id[:12]} was removed")
            if self._proc is None:
                raise PyrtError(f"container {self.id[:12]} was not started")
            if self._dir is None:  # (run()'s, removed as it ends: `Container._spawn`)
                raise PyrtError(f"reset of container {self.id[:12]}: run() removes it as it ends")
            if self._o.tty:
                raise PyrtError("reset of a container with tty=True is not supported")
            if self._checker is not None:
                self._checker.stop()
                self._checker = None
            server = self._stop_server()
            proc = self._proc
            if self._returncode is None and proc.wait(0) is None:
                proc.kill(signal.SIGKILL)
                self._thaw()
            assert self._dir is not None
            rootless_net = isinstance(self._net, PrivateNetwork) and self._net.rootless
            replaced: Optional[Replaced] = (proc, server)
            if rootless_net or self._dir.has_layer():
                # What is swapped must wait for the end; otherwise the start after it waits
                # for it, in the same call of the core (see `_core.respawn`).
                end_killed(proc, server)
                replaced = None
            if rootless_net:
                assert isinstance(self._net, PrivateNetwork)
                # A rootless network lives in the container's user namespace: made again, on
                # the same host ports.
                self._ports = [(p.container_port, p.proto, p.host_addr, p.host_port)
                               for p in self._net.published]  # fmt: skip
                self._net.close()
                self._net = None
            try:
                self._dir.reset_layer()
            except OSError as e:  # (no room for a fresh layer: the container stays exited)
                raise state_error(e) from e
            self._proc = None
            self._returncode = None
        try:
            self._spawn_detached(replaced, serve)
        except BaseException:
            if replaced is not None:
                # (Ended already when the core's call got that far; otherwise now: nothing
                # else holds the old container, which the failed start leaves exited.)
                with contextlib.suppress(Exception):
                    end_killed(*replaced)
            raise
        self._start_checker()
        return self
