"""Starting a container: its spec (assembled from a template, ``assemble``), its network and
directory made first, the core's spawn, and what other processes are told of it (its
``state.json``); or, for a run to completion, no directory at all (``_scratch_fits``)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from pyrt import _core
from pyrt.config import options
from pyrt.container.health import Healthcheck
from pyrt.errors import PyrtError, SpawnError, state_error
from pyrt.host import kernel, userns
from pyrt.host.faults import fault
from pyrt.host.state import ContainerDir, mount_point, pid_start_time
from pyrt.image import Image
from pyrt.image.image import overlay_supported
from pyrt.network.private import PrivateNetwork
from pyrt.network.shared import Member, Network
from pyrt.oci import assemble, spec

if TYPE_CHECKING:
    from pyrt.container.container import Container

#: A detached container's log is rotated at this size, keeping one previous file.
LOG_CAP = 16 << 20

#: What a reset's start replaces: the container's first process (already sent SIGKILL) and
#: its exec server, ended by the start before it spawns (`_core.respawn`).
Replaced = tuple[_core.Process, Optional[_core.ExecServer]]


def end_killed(proc: _core.Process, server: Optional[_core.ExecServer]) -> Optional[int]:
    """The end of a killed container (a reset's, a removed one's), as ``_core.respawn`` waits
    for it: its first process reaped (its return code returned), its cgroup removed (with
    anything left in it), its exec server reaped. Idempotent."""
    code = proc.wait(None)
    proc.destroy_cgroup()
    if server is not None:
        server.close()
    return code


class ContainerSpawning:
    """The start of ``pyrt.Container`` (a base class of it): ``_spawn`` and what it needs."""

    if TYPE_CHECKING:
        id: str
        name: Optional[str]
        image: Image
        args: list[str]
        console: Optional[int]
        _o: options.ContainerOptions
        _userns: Optional[userns.IdMaps]
        _limits: Optional[spec.Limits]
        _idle: bool
        _dir: Optional[ContainerDir]
        _scratch: bool
        _removed: bool
        _detached: bool
        _lock: threading.Lock
        _proc: Optional[_core.Process]
        _process: Optional[spec.ProcessSpec]
        _seccomp: Optional[Mapping[str, Any]]
        _seccomp_json: Optional[str]
        _state_doc: Optional[dict[str, Any]]
        _spec_cache: Optional[tuple[Any, assemble.Assembled, str]]
        _log_done: int
        _net: Union[PrivateNetwork, Member, None]
        _network: Optional[Network]
        _join_net: Optional[Container]
        _healthcheck: Optional[Healthcheck]

        @property
        def ip(self) -> Optional[str]: ...
        def _make_dir(self) -> ContainerDir: ...
        def _lower(self) -> tuple[str, ...]: ...
        def _note_live(self) -> None: ...
        def _close_log_done(self) -> None: ...
        def _start_network(self, d: ContainerDir) -> list[dict[str, Any]]: ...
        def _attach_network(self, proc: _core.Process) -> None: ...
        def _netns_path(self) -> Optional[str]: ...
        def _userns_path(self) -> Optional[str]: ...
        def _adopt_server(self, proc: _core.Process, made: Optional[_core.ExecServer]) -> None: ...

    def build_spec(self, root_dir: str, cgroup: bool = False) -> dict[str, Any]:
        """The OCI runtime spec of this container, its root mounted on ``root_dir``; with
        ``cgroup`` (implied by limits) in a cgroup of its own. The spec is made by
        ``assemble.container_spec`` from what is gathered here; the container keeps the
        process it describes (each exec's is laid over it) and its seccomp filter."""
        return self._assembled(root_dir, cgroup)[0].config

    def _assembled(self, root_dir: str, cgroup: bool) -> tuple[assemble.Assembled, str]:
        """``build_spec``'s spec (its ``config``) and the JSON the core is sent of it
        (``container_spec_sent``: from a template made once for containers that differ only in
        id and command)."""
        d = self._dir
        image_kind = self.image.kind
        if image_kind == "host":
            layers = None
        elif self._scratch:
            layers = assemble.Layers(lower=self._lower(), scratch=True)
        elif d is None:
            raise PyrtError(f"container {self.id[:12]}: no directory to build its spec in")
        elif not overlay_supported():
            layers = assemble.Layers(copy=str(d.path / "copy"))
        else:
            layers = assemble.Layers(lower=self._lower(), upper=str(d.upper), work=str(d.work))
        at = assemble.Placement(
            root_dir=root_dir,
            layers=layers,
            id_maps=self._userns,
            limits=self._limits,
            netns_path=self._netns_path(),
            userns_path=self._userns_path(),
            idle=self._idle,
            # Root places any container in a cgroup; a rootless caller has none to write.
            cgroup=bool(cgroup or self._limits) and (not self._userns or os.geteuid() == 0),
        )
        made, sent = assemble.container_spec_sent(self._o, self.image, self.id, self.args, at)
        self._process = made.process
        self._seccomp = made.seccomp
        self._seccomp_json = made.seccomp_json
        return made, sent

    # --- starting -----------------------------------------------------------------------

    def _spawn(
        self,
        stdin: int,
        stdout: int = -1,
        stderr: int = -1,
        cgroup: bool = False,
        scratch: bool = False,
        replaced: Optional[Replaced] = None,
        serve: bool = False,
    ) -> None:
        """Creates the container's directory and starts it. With stdout/stderr of -1, both go
        to the container's log file. A cgroup is made when there are limits or ``cgroup``
        asks for one (a detached container, for stats): it costs ~0.7 ms on cgroup v1.
        ``scratch`` (run(), which removes the container when it exits): where nothing of the
        container is kept on the host (`_scratch_fits`), it has no directory at all, and its
        writable layer is a tmpfs in its own mount namespace. ``replaced``: a reset's container
        before, ended first; ``serve``: its exec server started at once (a pool's)."""
        with self._lock:
            if self._removed:
                raise PyrtError(f"container {self.id[:12]} was removed")
            if self._proc is not None:
                raise PyrtError(f"container {self.id[:12]} was already started")
            self._scratch = scratch and self._scratch_fits(cgroup, stdout, stderr)
            d = None if self._scratch else self._dir or self._make_dir()
            fault("dir-created")
            log = -1
            ours = theirs = -1
            try:
                if self._o.tty:
                    # fd 0 of the child is a socket it sends the pty's master over.
                    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    ours, theirs = a.detach(), b.detach()
                    stdin = stdout = stderr = theirs
                elif stdout < 0:
                    assert d is not None  # (not scratch)
                    log, done = _core.log_pipe(str(d.log), LOG_CAP)
                    stdout = stderr = log
                    self._close_log_done()
                    self._log_done = done
                self._dir = d
                net_mounts = self._start_network(d) if d is not None else []
                made, sent = self._spawn_spec(d, cgroup, net_mounts)
                if d is not None and self._seccomp_json:
                    d.raw_fields["seccomp"] = self._seccomp_json
                elif d is not None:
                    d.raw_fields.pop("seccomp", None)
                # (Only a container in a cgroup, detached, is written for other processes.)
                state = self._state(made.config) if cgroup else {}
                hold = self._net is not None and self._net.needs_attach
                if cgroup and d is not None and self._state_doc is None:
                    if hold:
                        # Known before any kernel object exists (else the core's call writes
                        # it, with the pid). A crash from here on leaves a directory, and maybe
                        # a pyrt-ID cgroup, that the helper or `pyrt gc` finishes off.
                        d.write_state(state)
                    fault("state-written")
                try:
                    serve = serve and not self._o.tty  # (as `_exec_server`: none for a tty)
                    started: Optional[int] = None  # (its pid's start time, once written)
                    if hold:
                        if replaced is not None:
                            end_killed(*replaced)
                        proc = _core.spawn(sent, stdin, stdout, stderr, hold=True,
                                           seccomp_json=self._seccomp_json)  # fmt: skip
                        self._attach_network(proc)
                    else:
                        at = d if cgroup else None
                        proc, started = self._respawn(sent, (stdin, stdout, stderr), replaced,
                                                      serve, at, state)  # fmt: skip
                    self._proc = proc
                except SpawnError as e:
                    if self._userns is not None and e.stage == "namespaces":
                        why = userns.blocked_because()
                        if why is not None:
                            raise SpawnError(f"{e}: {why}", stage=e.stage, errno=e.errno) from e
                    raise
                if ours >= 0:
                    self.console = _receive_fd(ours)
                fault("spawned")
                if d is not None and not cgroup:
                    # (A detached container's go into its state just below, one file fewer.)
                    d.record_cgroups(self._proc.cgroup_paths())
                if cgroup and d is not None:
                    pid = self._proc.pid
                    state.update(status="running", pid=pid, cgroups=self._proc.cgroup_paths(),
                                 pid_start=started or pid_start_time(pid))  # fmt: skip
                    if started is None:
                        d.write_state(state)
                    self._state_doc = state
                    fault("running")
            except BaseException as e:
                self._dir = None
                if self._net is not None:
                    self._net.close()
                    self._net = None
                if d is not None:
                    d.remove()
                if isinstance(e, OSError) and not isinstance(e, PyrtError):
                    raise state_error(e) from e
                raise
            finally:
                for fd in (log, ours, theirs):
                    if fd >= 0:
                        os.close(fd)
            self._note_live()

    def _respawn(
        self,
        sent: str,
        stdio: tuple[int, int, int],
        replaced: Optional[Replaced],
        serve: bool,
        d: Optional[ContainerDir],
        state: dict[str, Any],
    ) -> tuple[_core.Process, Optional[int]]:
        """A start in one call of the core (every start but a held one): after the end of
        ``replaced`` (a reset's), with the exec server (``serve``) and the state file in ``d``
        written. It releases the GIL once where the steps one by one did five times or more,
        and a pool's thread waits for it back each time the caller's thread runs Python
        (``pyrt.container.pool``). Returns the process and its pid's start time when the
        state was written."""
        old, server = replaced or (None, None)
        written = None
        if d is not None:
            fields = {k: v for k, v in state.items() if k not in ("pid", "pid_start", "cgroups")}
            written = (str(d.state_file), d.state_text({**fields, "status": "running"}))
        while True:
            got = _core.respawn(sent, *stdio, seccomp_json=self._seccomp_json, replaces=old,
                                server=server, serve=serve, state=written)  # fmt: skip
            if got is not None:
                break
            assert old is not None  # (not ended within the call's wait: waited for here,
            old.wait(None)  # where a signal's handler can interrupt it)
        proc, made, started = got
        if serve:
            self._adopt_server(proc, made)
        return proc, started if d is not None else None

    def _scratch_fits(self, cgroup: bool, stdout: int, stderr: int) -> bool:
        """Whether a container run to completion can do without a directory: one with a
        writable layer (not the host image's), not bounded (``disk=``), and nothing else of
        it on the host (no files written into it before, no cgroup to record, no log, no
        network of its own, whose files live in the directory). In a user namespace, tmpfs
        keeps overlayfs's user.* xattrs from Linux 6.6 on."""
        return (
            self._dir is None
            and self.image.kind != "host"
            and overlay_supported()
            and self._o.disk is None
            and not (cgroup or self._limits)
            and min(stdout, stderr) >= 0
            and not self._o.tty
            and self._o.network not in ("private", "shared")
            and (self._userns is None or kernel.at_least(6, 6))
        )

    def _spawn_spec(
        self, d: Optional[ContainerDir], cgroup: bool, net_mounts: list[dict[str, Any]]
    ) -> tuple[assemble.Assembled, str]:
        """The spec (its ``config``) and the JSON the core gets (the seccomp filter apart). A
        reset spawns the same container again: without a network of its own (whose namespace
        and files are made anew), with the same limits, the spec is the same and is not built
        again (a fifth of a reset's Python time)."""
        reusable = not net_mounts and self._net is None and self._join_net is None
        root = str(d.rootfs if d is not None else mount_point())
        key = (root, cgroup, self._limits, self._scratch)
        cached = self._spec_cache
        if reusable and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        made, sent = self._assembled(root, cgroup)
        if net_mounts:
            doc = made.config
            doc["mounts"].extend(net_mounts)
            sent = json.dumps(assemble.without_seccomp(doc) if self._seccomp_json else doc)
        self._spec_cache = (key, made, sent) if reusable else None
        return made, sent

    def _state(self, doc: dict[str, Any]) -> dict[str, Any]:
        """What other processes (`pyrt ps`, `exec`, `logs`, `kill`, `rm`) know of us."""
        return {
            "id": self.id,
            "name": self.name,
            "image": (self.image.tags or [self.image.source or self.image.kind])[0],
            "command": self.args,
            "created": time.time(),
            "status": "creating",
            "owner": os.getpid(),
            "detached": self._detached,
            "log": str(self._dir.log) if self._dir else None,
            "process": doc["process"],
            # (As text beside the rest when the core was sent it so: `ContainerDir.raw_fields`.)
            **({} if self._seccomp_json else {"seccomp": doc["linux"].get("seccomp")}),
            "ports": [
                f"{p.host_addr}:{p.host_port}->{p.container_port}/{p.proto}"
                for p in (self._net.published if self._net is not None else ())
            ],
            "network": self._network.name if self._network is not None else self._o.network,
            "ip": self.ip,
            **({"health": "starting"} if self._healthcheck is not None else {}),
        }


def _receive_fd(sock: int) -> int:
    """The descriptor a child sent over ``sock`` (SCM_RIGHTS)."""
    with socket.socket(fileno=os.dup(sock)) as s:
        _, fds, _, _ = socket.recv_fds(s, 16, 1)
    if not fds:
        raise SpawnError("the container sent no terminal", stage="devices", errno=5)
    os.set_inheritable(fds[0], False)
    return fds[0]
