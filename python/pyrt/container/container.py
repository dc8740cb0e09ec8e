"""``pyrt.Container`` and ``pyrt.run``: a container's life, from options to a result."""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import signal
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Union

from pyrt import _core
from pyrt.config import checks, options
from pyrt.config.idle import Idle
from pyrt.config.mounts import Mount
from pyrt.container import lifecycle, spawning
from pyrt.container.control import ContainerControl
from pyrt.container.execs import ContainerExecs
from pyrt.container.files import ContainerFiles
from pyrt.container.health import Checker, Healthcheck
from pyrt.container.networking import ContainerNetworking
from pyrt.container.readiness import ContainerReadiness
from pyrt.container.results import Result, Stats
from pyrt.container.root import ContainerRoot
from pyrt.container.snapshots import ContainerSnapshots
from pyrt.container.spawning import ContainerSpawning
from pyrt.container.stdio import DEVNULL, Target
from pyrt.container.steps import ContainerSteps, Input
from pyrt.errors import (
    ImageError,
    ImageNotFound,
    InvalidOption,
    PyrtError,
)
from pyrt.host import userns
from pyrt.host.state import ContainerDir
from pyrt.image import Image
from pyrt.image.config import command_for
from pyrt.image.image import overlay_supported
from pyrt.network.private import HostPort, PrivateNetwork, parse_ports
from pyrt.network.shared import Member, Network
from pyrt.oci import spec
from pyrt.oci.assemble import Assembled

PathArg = Union[str, "os.PathLike[str]"]


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
    ContainerSpawning,
    ContainerRoot,
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
    - ``output_limit``: the most ``run`` and ``exec`` keep of each captured stream (bytes or
      ``"64m"``; 1 GiB by default, None for no bound). A process that writes more is killed
      (for ``run``, the container) and ``pyrt.OutputLimitExceeded`` raised with what was kept.
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
        output_limit: Union[int, str, None] = options.OUTPUT_LIMIT,
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
            output_limit=options.output_limit(output_limit),
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
        self.id = os.urandom(16).hex()  # (as secrets.token_hex, without importing hmac)
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
        self._spec_cache: Optional[tuple[Any, Assembled, str]] = None
        #: Started by run() without a directory (`_scratch_fits`).
        self._scratch = False

    @property
    def _steps(self) -> ContainerSteps:
        # Made per call: held by the container, it would make a cycle that only the garbage
        # collector frees (and with it the process's descriptors).
        return ContainerSteps(self)

    def __repr__(self) -> str:
        return f"<pyrt.Container {self.name or self.id[:12]} {self.status}>"

    def start(self, *, detached: bool = False) -> Container:
        """Starts in the background: stdout and stderr go to the container's log (see
        ``logs()``). Returns once the command runs. Other processes see it in `pyrt ps` and can
        exec into it, read its logs and remove it by id or name."""
        return self._start(detached, serve=False)

    def _start(self, detached: bool, serve: bool) -> Container:
        """``start``; with ``serve`` (a pool's), the exec server started with the container."""
        if self.name is not None:
            from pyrt.host.state import list_states

            if any(st.get("name") == self.name for st in list_states()):
                raise PyrtError(f"the name {self.name!r} is already in use by a running container")
        self._detached = detached
        self._spawn_detached(serve=serve)
        if self.console is not None and self._dir is not None:
            # The console's output is the container's log; `console` stays for its input. As
            # with a log pipe, logs() after the exit waits for the last of it.
            done = _core.log_from(os.dup(self.console), str(self._dir.log), spawning.LOG_CAP)
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

    def _note_live(self) -> None:
        _live.add(self)

    def _spawn_detached(
        self, replaced: Optional[spawning.Replaced] = None, serve: bool = False
    ) -> None:
        """Started with stdin from /dev/null and its output to the log, in a cgroup (after the
        end of what it ``replaced``, with its exec server if it should ``serve``: `_spawn`)."""
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._spawn(devnull, cgroup=True, replaced=replaced, serve=serve)
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
            server = self._stop_server()
            if self._checker is not None:
                self._checker.stop()
            if self._proc is not None:
                if self._returncode is None:
                    self._proc.kill(signal.SIGKILL)
                    self._thaw()
                self._returncode = spawning.end_killed(self._proc, server)
            elif server is not None:
                server.close()
            if self.console is not None:
                os.close(self.console)
                self.console = None
            if self._proc is not None:
                # Every writer of its log is gone: the log thread closes the pipe and the file
                # a moment later, and nothing of the container is left open once remove() returns.
                self._logs_flushed()
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
