"""Pause, resume and update of a running container (``docker pause``/``update``): the
cgroup freezer and new limits, carried out by the core's ``Process`` (written once there, and
driven by pyrt-runc too)."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import TYPE_CHECKING, Optional, Union

from pyrt import _core
from pyrt.config import options
from pyrt.errors import InvalidOption, PyrtError
from pyrt.oci import spec

if TYPE_CHECKING:
    from pyrt.host.state import ContainerDir


class ContainerControl:
    """The pause, resume and update methods of ``pyrt.Container`` (a base class of it)."""

    if TYPE_CHECKING:
        id: str
        _proc: Optional[_core.Process]
        _paused: bool
        _lock: threading.Lock
        _limits: Optional[spec.Limits]
        _dir: Optional[ContainerDir]

        @property
        def status(self) -> str: ...
        def _alive(self) -> bool: ...
        def _close_server(self) -> None: ...

    def _cgroup_proc(self, what: str) -> _core.Process:
        if self._proc is None or not self._alive():
            raise PyrtError(f"{what}: container {self.id[:12]} is {self.status}, not running")
        if not self._proc.cgroup_paths():
            raise PyrtError(f"{what}: container {self.id[:12]} has no cgroup (started by run())")
        return self._proc

    def _freeze(self, proc: _core.Process, what: str) -> bool:
        try:
            return proc.freeze()
        except OSError as e:
            raise PyrtError(f"{what}: freezing container {self.id[:12]}: {e.strerror}") from e

    def _thaw(self) -> None:
        if self._paused and self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.thaw()
        self._paused = False

    def pause(self) -> None:
        """Freezes every process of the container (the cgroup freezer), as ``docker pause``;
        status "paused" until ``resume()``. Exec is refused meanwhile; files, commit, logs,
        kill and remove work."""
        with self._lock:
            proc = self._cgroup_proc("pause")
            if self._paused:
                return
            if not self._freeze(proc, "pause"):
                raise PyrtError("pause: this machine's cgroups have no freezer")
            self._paused = True

    def resume(self) -> None:
        """Lets a paused container run on."""
        with self._lock:
            proc = self._cgroup_proc("resume")
            if not self._paused:
                return
            try:
                proc.thaw()
            except OSError as e:
                raise PyrtError(f"resume: thawing container {self.id[:12]}: {e.strerror}") from e
            self._paused = False

    def update(
        self,
        memory: Union[int, str, None] = None,
        pids_limit: Optional[int] = None,
        cpus: Optional[float] = None,
    ) -> None:
        """New limits on the running container (as ``docker update``), checked as at creation;
        those not given stay as they are. They last across ``reset()``."""
        lim = options.limits(memory, pids_limit, cpus)
        if lim is None:
            raise TypeError("update() needs memory=, pids_limit= or cpus=")
        with self._lock:
            proc = self._cgroup_proc("update")
            try:
                paths = proc.update(json.dumps(lim.to_spec()))
            except ValueError as e:
                raise InvalidOption(f"update: {e}") from e
            except OSError as e:
                raise PyrtError(f"update: {e.strerror or e}") from e
            old = self._limits or spec.Limits()
            self._limits = spec.Limits(
                memory=lim.memory if lim.memory is not None else old.memory,
                pids=lim.pids if lim.pids is not None else old.pids,
                cpus=lim.cpus if lim.cpus is not None else old.cpus,
            )
            if self._dir is not None:
                self._dir.record_cgroups(paths)
            # The exec server steps into the hierarchies it was given: one added (cpus= where
            # there were none) would be missed. The next one gets them all.
            self._close_server()
