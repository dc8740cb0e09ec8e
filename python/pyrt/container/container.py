"""``pyrt.Container`` and ``pyrt.run``: a container's life, from options to a result."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Optional, Union

from pyrt import _core
from pyrt.config import checks, options
from pyrt.config.idle import Idle
from pyrt.config.mounts import Mount
from pyrt.container import lifecycle
from pyrt.container.control import ContainerControl
from pyrt.container.execs import ContainerExecs
from pyrt.container.files import ContainerFiles
from pyrt.container.health import Checker, Healthcheck
from pyrt.container.networking import ContainerNetworking
from pyrt.container.readiness import ContainerReadiness
from pyrt.container.results import Result, Stats
from pyrt.container.snapshots import ContainerSnapshots
from pyrt.container.stdio import DEVNULL, Target
from pyrt.container.steps import ContainerSteps, Input
from pyrt.errors import (
    ImageError,
    ImageNotFound,
    InvalidOption,
    PyrtError,
    SpawnError,
    state_error,
)
from pyrt.host import kernel, userns
from pyrt.host.faults import fault
from pyrt.host.state import ContainerDir, mount_point, pid_start_time
from pyrt.image import Image
from pyrt.image.config import command_for
from pyrt.image.image import overlay_supported
from pyrt.network.private import HostPort, PrivateNetwork, parse_ports
from pyrt.network.shared import Member, Network
from pyrt.oci import assemble, spec
from pyrt.rootfs import files
from pyrt.rootfs import view as rootview

PathArg = Union[str, "os.PathLike[str]"]


#: A detached container's log is rotated at this size, keeping one previous file.
LOG_CAP = 16 << 20
#: The most image layers overlayfs stacks under a container's writable one (OVL_MAX_STACK).
MAX_LAYERS = 500


_live: weakref.WeakSet[Container] = weakref.WeakSet()


def remove_all() -> None:
    """Removes every container of this process still alive (at exit, and at the end of a
    pytest session, for the plugin)."""
    for c in list(_live):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            c.remove()


atexit.register(remove_all)


class Container(
    ContainerExecs,
    ContainerFiles,
    ContainerReadiness,
    ContainerControl,
    ContainerNetworking,
    ContainerSnapshots,
):
    """A container of ``image``. Nothing happens until ``run()`` or ``start()``.

    The options are those of the contract (``../shared/api.md``). Among them:

    - ``network``: ``"none"`` (default; loopback only), ``"host"``, ``"private"`` (outbound
      access through slirp4netns; ``host.pyrt.internal`` is the host's 127.0.0.1), or another
      ``Container`` whose network namespace to share (root only).
    - ``ports``: with ``"private"``, ``{container_port: host}`` where host is None (a free
      port on 127.0.0.1), a port, ``"ADDR:PORT"`` or ``(ADDR, PORT)``; a key may be
      ``"53/udp"``. ``port(n)`` says which host port was chosen.
    - ``rootless``: a user namespace with the caller as root (the default when not root;
      ``True`` asks for it as root too, mapped to an unprivileged range, the stronger choice
      for untrusted code). Root's containers of the host image always have one, unless
      ``privileged``.
    - ``disk``: a bound on the writable layer (bytes or ``"1g"``): writes beyond it fail
      with ENOSPC inside. The layer is then a tmpfs of that size (memory, as the rest of the
      run state); root only, and not for the host image, which has no writable layer.
    """

    def __init__(
        self,
        image: Image,
        command: Optional[Sequence[str]] = None,
        *,
        entrypoint: Optional[Sequence[str]] = None,
        env: Optional[Mapping[str, str]] = None,
        workdir: Optional[str] = None,
        user: Optional[str] = None,
        hostname: Optional[str] = None,
        name: Optional[str] = None,
        mounts: Sequence[Mount] = (),
        readonly_rootfs: bool = False,
        network: Union[str, Container, Network, None] = None,
        aliases: Sequence[str] = (),
        ports: Optional[Mapping[Any, HostPort]] = None,
        memory: Union[int, str, None] = None,
        pids_limit: Optional[int] = None,
        cpus: Optional[float] = None,
        cap_add: Sequence[str] = (),
        cap_drop: Sequence[str] = (),
        privileged: bool = False,
        init: bool = False,
        rootless: Optional[bool] = None,
        tty: bool = False,
        disk: Union[int, str, None] = None,
        healthcheck: Optional[Healthcheck] = None,
    ) -> None:
        if not isinstance(image, Image):
            raise TypeError(f"image must be a pyrt.Image, not {type(image).__name__}")
        if image.kind != "host":
            # (One stat a layer: a removed image's containers would fail at the overlay's
            # mount with a bare ENOENT.)
            gone = next((d for d in image.lower if not os.path.isdir(d)), None)
            if gone is not None:
                raise ImageNotFound(
                    f"{image!r}: its files at {gone} are gone (the image was removed, or its "
                    "directory deleted)"
                )
            if len(image.lower) > MAX_LAYERS and overlay_supported():
                raise ImageError(
                    f"{image!r}: {len(image.lower)} layers; overlayfs stacks at most "
                    f"{MAX_LAYERS}, so no container of it can be mounted"
                )
        lim = options.limits(memory, pids_limit, cpus)
        disk_bytes = options.disk(disk, image.kind)
        if rootless is not None:
            checks.flag(rootless, "rootless")
        else:
            rootless = os.geteuid() != 0
        self._join_net: Optional[Container] = None
        self._network: Optional[Network] = None
        if isinstance(network, str) and network not in spec.NETWORK_MODES:
            network = Network.open(network)
        if isinstance(network, Network):
            # One of several containers on a shared network, each with its own namespace.
            self._network, network = network, "shared"
        elif isinstance(network, Container):
            # Docker's "container:" mode: share that container's network namespace (and so its
            # loopback and its published ports), as an app and its database often do.
            self._join_net, network = network, "joined"
        elif network is None:
            # Publishing a port implies a network with a way in, as `pyrt run -p` does.
            network = "private" if ports else "none"
        elif not isinstance(network, str):
            raise TypeError(
                "network must be a str, a pyrt.Network or a pyrt.Container, not "
                f"{type(network).__name__}"
            )
        if ports is not None and not isinstance(ports, Mapping):
            raise TypeError(
                f"ports must be a dict of container port to host port, not {type(ports).__name__}"
            )
        self._ports = parse_ports(ports)
        # Root's containers of the host image see the host's own files: in a user namespace
        # of an unprivileged range, what belongs to host root (its unix sockets, /etc/shadow)
        # is someone else's to them. privileged=True keeps them the host's root.
        sandboxed = (
            image.kind == "host" and os.geteuid() == 0 and not checks.flag(privileged, "privileged")
        )
        if self._join_net is not None and rootless and os.geteuid() != 0:
            # (Root's containers in a user namespace are born in the other's network
            # namespace instead: the core's spawner steps into it for the clone.)
            raise PyrtError(
                "network=<container> is not available to rootless containers (each has a user "
                "namespace of its own); reach the other one through a published port at "
                "host.pyrt.internal instead"
            )
        if self._ports and network not in ("private", "shared"):
            raise PyrtError(
                "ports= needs network='private' or a pyrt.Network (a network with a way in)"
            )
        alias_list = [checks.name(a, "aliases") or "" for a in checks.names(aliases, "aliases")]
        if alias_list and self._network is None:
            raise InvalidOption("aliases= needs network=<pyrt.Network> (names on a shared network)")
        self._o = options.ContainerOptions(
            env=checks.env(env),
            workdir=None if workdir is None else checks.container_path(workdir, "workdir"),
            user=checks.user(user),
            hostname=checks.hostname(hostname),
            name=checks.name(name),
            mounts=options.mounts(mounts),
            readonly_rootfs=checks.flag(readonly_rootfs, "readonly_rootfs"),
            network=network,
            aliases=tuple(alias_list),
            cap_add=tuple(checks.names(cap_add, "cap_add")),
            cap_drop=tuple(checks.names(cap_drop, "cap_drop")),
            privileged=checks.flag(privileged, "privileged"),
            init=checks.flag(init, "init"),
            tty=checks.flag(tty, "tty"),
            limits=lim,
            disk=disk_bytes,
        )
        # Validate what can be validated before anything exists.
        spec.capability_set(self._o.cap_add, self._o.cap_drop, self._o.privileged)
        self._limits = lim
        self._userns = userns.maps_for_caller() if rootless or sandboxed else None
        if self._userns is not None and self._limits and os.geteuid() != 0:
            userns.check_limits_possible()
        self._net: Union[PrivateNetwork, Member, None] = None
        if healthcheck is not None and not isinstance(healthcheck, Healthcheck):
            raise TypeError(
                f"healthcheck must be a pyrt.Healthcheck, not {checks.show(healthcheck)}"
            )
        hc = healthcheck or Healthcheck.from_image(image.config.healthcheck)
        self._healthcheck = None if hc is None or hc.disabled else hc
        self._checker: Optional[Checker] = None
        self._paused = False
        #: Reads EOF once the log thread has written all the container's output (see logs()).
        self._log_done = -1
        self.image = image
        self.id = secrets.token_hex(16)
        self.name = self._o.name
        self._command = None if command is None else checks.args(command, "command", empty_ok=True)
        self._entrypoint = (
            None if entrypoint is None else checks.args(entrypoint, "entrypoint", empty_ok=True)
        )
        self.args = command_for(image.config, self._command, self._entrypoint)
        if not self.args:
            raise PyrtError("no command: the image has no Entrypoint or Cmd, and none was given")
        # Kept only to exec into: init stands in for the command (`pyrt.config.idle`).
        self._idle = self._o.init and isinstance(command, Idle) and self.args == command
        #: With tty=True, once started: the pty's master (read the console, write its input).
        self.console: Optional[int] = None
        self._proc: Optional[_core.Process] = None
        self._process: Optional[spec.ProcessSpec] = None
        #: (the process spec, the JSON of its exec process without "args" nor the opening "{").
        self._exec_rest: Optional[tuple[spec.ProcessSpec, str]] = None
        self._state_doc: Optional[dict[str, Any]] = None
        self._seccomp: Optional[Mapping[str, Any]] = None
        self._seccomp_json: Optional[str] = None
        self._detached = False
        self._dir: Optional[ContainerDir] = None
        self._returncode: Optional[int] = None
        self._removed = False
        self._lock = threading.Lock()
        #: The exec server, with the first process it serves (``_exec_server``).
        self._server: Optional[tuple[_core.Process, Optional[_core.ExecServer]]] = None
        self._server_lock = threading.Lock()
        self._server_asked: Optional[_core.Process] = None
        self._spec_cache: Optional[tuple[Any, dict[str, Any], str]] = None
        #: Started by run() without a directory (`_scratch_fits`).
        self._scratch = False

    @property
    def _steps(self) -> ContainerSteps:
        # Made per call: held by the container, it would make a cycle that only the garbage
        # collector frees (and with it the process's descriptors).
        return ContainerSteps(self)

    def __repr__(self) -> str:
        return f"<pyrt.Container {self.name or self.id[:12]} {self.status}>"

    # --- the spec ---------------------------------------------------------------------

    def build_spec(self, root_dir: str, cgroup: bool = False) -> dict[str, Any]:
        """The OCI runtime spec of this container, its root mounted on ``root_dir``; with
        ``cgroup`` (implied by limits) in a cgroup of its own. The spec is made by
        ``assemble.container_spec`` from what is gathered here; the container keeps the
        process it describes (each exec's is laid over it) and its seccomp filter."""
        return self._assembled(root_dir, cgroup)[0]

    def _assembled(self, root_dir: str, cgroup: bool) -> tuple[dict[str, Any], str]:
        """``build_spec``'s spec and the JSON the core is sent of it (``container_spec_sent``:
        from a template made once for containers that differ only in id and command)."""
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
        return made.config, sent

    # --- starting -----------------------------------------------------------------------

    def _spawn(
        self,
        stdin: int,
        stdout: int = -1,
        stderr: int = -1,
        cgroup: bool = False,
        scratch: bool = False,
    ) -> None:
        """Creates the container's directory and starts it. With stdout/stderr of -1, both go
        to the container's log file. A cgroup is made when there are limits or ``cgroup``
        asks for one (a detached container, for stats): it costs ~0.7 ms on cgroup v1.
        ``scratch`` (run(), which removes the container when it exits): where nothing of the
        container is kept on the host (`_scratch_fits`), it has no directory at all, and its
        writable layer is a tmpfs in its own mount namespace."""
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
                doc, sent = self._spawn_spec(d, cgroup, net_mounts)
                if d is not None and self._seccomp_json:
                    d.raw_fields["seccomp"] = self._seccomp_json
                elif d is not None:
                    d.raw_fields.pop("seccomp", None)
                # (Only a container in a cgroup, detached, is written for other processes.)
                state = self._state(doc) if cgroup else {}
                if cgroup and d is not None and self._state_doc is None:
                    # Known before any kernel object exists; a crash from here on leaves a
                    # directory that collect_stale (or `pyrt gc`) finishes off. (A reset's
                    # directory has its state from the first start: one write after is enough.)
                    d.write_state(state)
                    fault("state-written")
                try:
                    hold = self._net is not None and self._net.needs_attach
                    proc = _core.spawn(sent, stdin, stdout, stderr, hold=hold,
                                       seccomp_json=self._seccomp_json)  # fmt: skip
                    if hold:
                        self._attach_network(proc)
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
                if d is not None:
                    d.record_cgroups(self._proc.cgroup_paths())
                if cgroup and d is not None:
                    pid = self._proc.pid
                    state.update(status="running", pid=pid, pid_start=pid_start_time(pid),
                                 cgroups=self._proc.cgroup_paths())  # fmt: skip
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
            _live.add(self)

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
    ) -> tuple[dict[str, Any], str]:
        """The spec and the JSON the core gets (the seccomp filter apart). A reset spawns the
        same container again: without a network of its own (whose namespace and files are
        made anew), with the same limits, the spec is the same and is not built again (a
        fifth of a reset's Python time)."""
        reusable = not net_mounts and self._net is None and self._join_net is None
        root = str(d.rootfs if d is not None else mount_point())
        key = (root, cgroup, self._limits, self._scratch)
        cached = self._spec_cache
        if reusable and cached is not None and cached[0] == key:
            return cached[1], cached[2]
        doc, sent = self._assembled(root, cgroup)
        if net_mounts:
            doc["mounts"].extend(net_mounts)
            sent = json.dumps(assemble.without_seccomp(doc) if self._seccomp_json else doc)
        self._spec_cache = (key, doc, sent) if reusable else None
        return doc, sent

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

    def start(self, *, detached: bool = False) -> Container:
        """Starts in the background: stdout and stderr go to the container's log (see
        ``logs()``). Returns once the command runs. Other processes see it in `pyrt ps` and can
        exec into it, read its logs and remove it by id or name."""
        if self.name is not None:
            from pyrt.host.state import list_states

            if any(st.get("name") == self.name for st in list_states()):
                raise PyrtError(f"the name {self.name!r} is already in use by a running container")
        self._detached = detached
        self._spawn_detached()
        if self.console is not None and self._dir is not None:
            # The console's output is the container's log; `console` stays for its input. As
            # with a log pipe, logs() after the exit waits for the last of it.
            done = _core.log_from(os.dup(self.console), str(self._dir.log), LOG_CAP)
            self._close_log_done()
            self._log_done = done
        self._start_checker()
        return self

    def _start_checker(self) -> None:
        if self._healthcheck is None:
            return
        if self._checker is not None:
            self._checker.stop()

        def run_check(argv: list[str], timeout: float) -> int:
            # Only the status counts: output kept would be memory a chatty check fills.
            return self.exec(argv, timeout=timeout, stdout=DEVNULL, stderr=DEVNULL).returncode

        def noted(status: str) -> None:
            if self._dir is not None and self._state_doc is not None and not self._removed:
                self._state_doc["health"] = status
                with contextlib.suppress(OSError):
                    self._dir.write_state(self._state_doc)

        self._checker = Checker(self._healthcheck, run_check,
                                self._alive, noted, lambda: self._paused)  # fmt: skip

    @property
    def health(self) -> Optional[str]:
        """None (no healthcheck), "starting", "healthy" or "unhealthy"."""
        if self._healthcheck is None:
            return None
        return self._checker.status if self._checker is not None else "starting"

    def record_exit(self, code: int) -> None:
        """Notes the exit status in the shared state (for `pyrt ps` and the like)."""
        if self._dir is not None and self._state_doc is not None:
            self._state_doc.update(status="exited", exit_code=code)
            self._dir.write_state(self._state_doc)

    def run(
        self,
        input: Input = None,
        timeout: Optional[float] = None,
        check: bool = False,
        text: bool = False,
        *,
        stdout: Target = None,
        stderr: Target = None,
    ) -> Result:
        """Runs to completion, like ``subprocess.run``; the container is removed afterwards.
        ``timeout`` kills the whole container and raises TimeoutExpired. ``stdout`` and
        ``stderr`` may go to a file, a descriptor or ``pyrt.DEVNULL`` instead of the result
        (``stderr=pyrt.STDOUT`` merges it into stdout). What it writes to its root lives in
        memory, in a tmpfs of its own that goes with it (bounded by the free space of pyrt's
        state directory and by half the memory), unless it was given files before, has limits,
        a network of its own or ``disk=``: then in its directory, as a started container's."""
        return lifecycle.drive(self._steps.run(input, timeout, check, text, stdout, stderr))

    # --- its files -------------------------------------------------------------------------

    def _mapped_root(self) -> Optional[tuple[int, int]]:
        """The host ids of the container's root when a root caller maps it to a range."""
        if self._userns is None or os.geteuid() != 0:
            return None
        return userns.host_id(self._userns.uid, 0), userns.host_id(self._userns.gid, 0)

    def _lower(self) -> tuple[str, ...]:
        """The image's layers as the container mounts them: moved into its range when a root
        caller maps it to one (``image.shifted``)."""
        mapped = self._mapped_root()
        if mapped is None:
            return tuple(self.image.lower)
        from pyrt.image import shifted

        assert self._userns is not None
        count = min(n for _, _, n in self._userns.uid + self._userns.gid)
        return tuple(shifted.shifted_lowers(self.image.lower, mapped[0], mapped[1], count))

    def _make_dir(self) -> ContainerDir:
        try:
            d = ContainerDir.create(
                self.id,
                overlay=self.image.kind != "host",
                owner=self._mapped_root(),
                disk=self._o.disk,
            )
        except OSError as e:
            raise state_error(e) if not isinstance(e, PyrtError) else e from None
        if self.image.kind != "host" and not overlay_supported():
            # No overlayfs: the container gets a private copy of the (flattened) image.
            r = subprocess.run(["cp", "-a", "--", self.image.lower[0], str(d.path / "copy")],
                               capture_output=True, text=True)  # fmt: skip
            if r.returncode != 0:
                d.remove()
                raise PyrtError(f"copying the image for a kernel without overlayfs: {r.stderr}")
        return d

    def _ensure_dir(self) -> ContainerDir:
        """The container's directory, made now for one that was not started yet (files written
        into it are there when it starts)."""
        if self._scratch:
            raise PyrtError(
                f"container {self.id[:12]} runs by run(), which removes it as it ends: its "
                "writable layer is in its own mount namespace, reached only while it runs"
            )
        if self._dir is None:
            self._dir = self._make_dir()
            _live.add(self)
        return self._dir

    def _root_owner(self, in_userns: bool) -> files.Owner:
        """Who the container's root is, as the writer of its files sees ids."""
        if in_userns:
            return (0, 0)
        if os.geteuid() != 0:
            return None  # a rootless caller writes as itself: the container's root
        if self._userns is not None:
            return (userns.host_id(self._userns.uid, 0), userns.host_id(self._userns.gid, 0))
        return (0, 0)

    def _in_root(self, what: str, op: Callable[[int, files.Owner], bytes], write: bool) -> bytes:
        """``op(root_fd, owner)`` on the container's root, whatever its state (``rootview``).
        What the kernel refuses on the way (a symlink loop, /proc's links, a file of /sys that
        cannot be read, a directory that cannot be made in /proc) is a PyrtError naming the
        path asked for, as the files module's own refusals are."""
        try:
            return self._on_root(what, op, write)
        except OSError as e:
            if isinstance(e, PyrtError):
                raise
            at = f" (at {e.filename})" if e.filename and e.filename != what else ""
            raise PyrtError(f"{what}: {e.strerror or e}{at}") from None

    def _on_root(self, what: str, op: Callable[[int, files.Owner], bytes], write: bool) -> bytes:
        with self._lock:
            if self._removed:
                raise PyrtError(f"container {self.id[:12]} was removed")
            if self._alive() and self._proc is not None:
                pid = self._proc.pid
                try:
                    if write and self._mapped_root() is not None:
                        return rootview.call_running_as_its_root(pid, lambda fd: op(fd, (0, 0)))
                    return rootview.call_running(pid, lambda fd: op(fd, self._root_owner(False)))
                except PyrtError:
                    # It exited just now: its layer is reached as a stopped one's.
                    if self._proc.wait(0) is None:
                        raise
            d = self._ensure_dir()
            if self.image.kind == "host":
                if write:
                    raise PyrtError(
                        f"{what}: a container of the host image has a read-only root; write "
                        "into a running one's /tmp or /run, or into a Bind or Tmpfs mount"
                    )
                return rootview.call_directory("/", lambda fd: op(fd, None))
            if not overlay_supported():
                owner = self._root_owner(False)
                return rootview.call_directory(str(d.path / "copy"), lambda fd: op(fd, owner))
            rootless = self._userns is not None and os.geteuid() != 0
            ov = rootview.Overlay(
                lower=self._lower(),
                upper=str(d.upper),
                work=str(d.work),
                target=str(d.rootfs),
                userxattr=self._userns is not None,
            )
            return rootview.call_stopped(ov, lambda fd: op(fd, self._root_owner(rootless)),
                                         rootless)  # fmt: skip

    def _spawn_detached(self) -> None:
        """Started with stdin from /dev/null and its output to the log, in a cgroup."""
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._spawn(devnull, cgroup=True)
        finally:
            os.close(devnull)

    # --- a running container -------------------------------------------------------------

    @property
    def pid(self) -> Optional[int]:
        """The first process's pid as seen from the host, once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def status(self) -> str:
        if self._removed:
            return "removed"
        if self._proc is None:
            return "created"
        if self._returncode is None and self._proc.wait(0) is None:
            return "paused" if self._paused else "running"
        return "exited"

    def _alive(self) -> bool:
        """Started and not ended: running or paused."""
        return self.status in ("running", "paused")

    def wait(self, timeout: Optional[float] = None) -> int:
        """The return code (exit status, or -SIGNUM). On timeout raises TimeoutExpired and the
        container keeps running, as ``subprocess.Popen.wait``."""
        return lifecycle.drive(self._steps.wait(timeout))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the container's first process (SIGKILL ends the whole container)."""
        sig = _signal_number(sig)
        if self._proc is not None and self._returncode is None:
            self._proc.kill(sig)
            if self._paused and sig == signal.SIGKILL:
                self._thaw()  # (a frozen process dies only once thawed)

    @property
    def stop_signal(self) -> int:
        """The signal ``stop()`` sends first: the image's STOPSIGNAL, else SIGTERM."""
        name = self.image.config.stop_signal
        if name:
            with contextlib.suppress(TypeError, ValueError):
                return _signal_number(int(name) if name.isdigit() else name)
        return int(signal.SIGTERM)

    def stop(self, timeout: float = 10) -> int:
        """The image's stop signal (SIGTERM unless its STOPSIGNAL says otherwise), then SIGKILL
        after ``timeout`` seconds; returns the return code."""
        return lifecycle.drive(self._steps.stop(timeout))

    def stats(self) -> Stats:
        """Memory, processes and CPU time of the container, from its cgroup."""
        if self._proc is None or self._removed:
            raise PyrtError(f"container {self.id[:12]} is not running")
        s = self._proc.stats()
        if s is None:
            raise PyrtError(f"container {self.id[:12]} has no cgroup (started by run())")
        return Stats(*s)

    @property
    def oom_killed(self) -> bool:
        """Whether the OOM killer killed any process of the container."""
        return self._proc is not None and self._proc.oom_kills() > 0

    def _logs_flushed(self, timeout: float = 2.0) -> None:
        """Once the container has exited: waits until the log thread has written the last of
        its output (a moment after the exit; a process the container left holding its stdout
        keeps it open, hence the bound)."""
        if self._log_done >= 0:
            select.select([self._log_done], [], [], timeout)

    def _close_log_done(self) -> None:
        if self._log_done >= 0:
            os.close(self._log_done)
            self._log_done = -1

    def logs(self) -> bytes:
        """Everything the container wrote so far (up to the last 2 x 16 MiB), stdout and stderr
        interleaved in the order written."""
        if self._dir is None:
            return b""
        if not self._alive():
            self._logs_flushed()
        out = b""
        for p in (self._dir.log.with_suffix(".1"), self._dir.log):
            with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
                out += f.read()
        return out

    def follow_logs(self, timeout: Optional[float] = None) -> Iterator[bytes]:
        """Yields what the container writes as it writes it, until it has exited and all is
        read (or ``timeout`` seconds pass: TimeoutExpired)."""
        return lifecycle.drive_chunks(self._steps.follow_logs(timeout))

    def remove(self) -> None:
        """Kills the container if needed and frees everything it had. Idempotent."""
        lifecycle.drive(self._steps.remove())

    def _teardown(self) -> None:
        """What remove() does once the container has exited (or at once, if it must)."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
            self._close_server()
            if self._checker is not None:
                self._checker.stop()
            if self._proc is not None:
                if self._returncode is None:
                    self._proc.kill(signal.SIGKILL)
                    self._thaw()
                    self._returncode = self._proc.wait(None)
                self._proc.destroy_cgroup()
            if self.console is not None:
                os.close(self.console)
                self.console = None
            self._close_log_done()
            if self._net is not None:
                self._net.close()
            if self._dir is not None:
                self._dir.remove()
            _live.discard(self)

    def __enter__(self) -> Container:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:
        # A container nobody references can never be waited for or removed: free it now.
        try:
            if not self._removed and getattr(self, "_proc", None) is not None:
                self.remove()
        except Exception:
            pass


def start_on(c: Container, stdin: int, stdout: int = -1, stderr: int = -1) -> None:
    """Starts ``c`` with its command's stdin, stdout and stderr on these descriptors (-1: the
    container's log), as `pyrt run` does in the foreground; with tty=True the console is
    ``c.console``. (The CLI's seam; users have run() and start().)"""
    c._spawn(stdin, stdout, stderr)


def spec_preview(c: Container) -> dict[str, Any]:
    """The runtime spec ``c`` would start with, built in a directory made and removed for it
    (`pyrt plan`)."""
    d = ContainerDir.create(c.id, overlay=c.image.kind != "host")
    try:
        c._dir = d
        return c.build_spec(str(d.rootfs))
    finally:
        c._dir = None
        d.remove()


def _receive_fd(sock: int) -> int:
    """The descriptor a child sent over ``sock`` (SCM_RIGHTS)."""
    with socket.socket(fileno=os.dup(sock)) as s:
        _, fds, _, _ = socket.recv_fds(s, 16, 1)
    if not fds:
        raise SpawnError("the container sent no terminal", stage="devices", errno=5)
    os.set_inheritable(fds[0], False)
    return fds[0]


def _signal_number(sig: object) -> int:
    """A signal given as a number, a ``signal.Signals`` or a name ("TERM", "SIGTERM")."""
    if isinstance(sig, str):
        name = sig.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            raise ValueError(f"signal {sig!r}: no such signal") from None
    if isinstance(sig, bool) or not isinstance(sig, int):
        raise TypeError(f"signal must be a number or a name, not {type(sig).__name__}")
    if not 1 <= int(sig) < signal.NSIG:
        raise ValueError(f"signal {sig!r}: not a signal number (1 to {signal.NSIG - 1})")
    return int(sig)


def run(
    image: Image,
    command: Optional[Sequence[str]] = None,
    input: Input = None,
    timeout: Optional[float] = None,
    check: bool = False,
    text: bool = False,
    *,
    stdout: Target = None,
    stderr: Target = None,
    **options: Any,
) -> Result:
    """Runs ``command`` in a fresh container of ``image`` and removes it; like subprocess.run.
    ``stdout``/``stderr``: ``pyrt.PIPE`` (captured, the default), ``pyrt.DEVNULL``, a file or
    a descriptor (``stderr=pyrt.STDOUT`` merges it into stdout)."""
    return Container(image, command, **options).run(
        input=input, timeout=timeout, check=check, text=text, stdout=stdout, stderr=stderr
    )
