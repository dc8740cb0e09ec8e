"""``pyrt.Container`` and ``pyrt.run``: a container's life, from options to a result."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from . import _core, spec
from .errors import ContainerError, PyrtError, SpawnError, TimeoutExpired
from .image import Image
from .image.config import command_for
from .mounts import Bind, Mount, Tmpfs
from .sizes import parse_size
from .state import ContainerDir

Input = Union[bytes, str, None]


class Result:
    """What ``run`` returns, like ``subprocess.CompletedProcess``."""

    def __init__(
        self,
        args: list[str],
        returncode: int,
        stdout: Union[bytes, str],
        stderr: Union[bytes, str],
        oom_killed: bool = False,
    ) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.oom_killed = oom_killed

    def __repr__(self) -> str:
        return f"Result(args={self.args!r}, returncode={self.returncode})"

    def check_returncode(self) -> None:
        """Raises ContainerError when the return code is not 0."""
        if self.returncode != 0:
            raise ContainerError(self.returncode, self.args, self.stdout, self.stderr)


@dataclass(frozen=True)
class Stats:
    """A container's usage, from its cgroup."""

    #: The cgroup's memory usage, page cache and shmem included.
    memory_bytes: int
    #: Processes (and threads) in the container.
    pids: int
    #: CPU time used by all its processes, in nanoseconds.
    cpu_ns: int


_MIN_MEMORY = 6 << 20


def _limits(
    memory: Union[int, str, None], pids_limit: Optional[int], cpus: Optional[float]
) -> Optional[spec.Limits]:
    """Validated limits; a limit that cannot be applied is an error, never silently ignored."""
    if memory is None and pids_limit is None and cpus is None:
        return None
    mem = None
    if memory is not None:
        mem = parse_size(memory, "memory")
        if mem < _MIN_MEMORY:
            raise PyrtError(f"memory={memory!r}: below the minimum of 6 MiB a container needs")
    if pids_limit is not None and (
        isinstance(pids_limit, bool) or not isinstance(pids_limit, int) or pids_limit < 1
    ):
        raise PyrtError(f"pids_limit={pids_limit!r}: must be a whole number of at least 1")
    if cpus is not None:
        ncpu = os.cpu_count() or 1
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not 0.01 <= cpus <= ncpu:
            raise PyrtError(f"cpus={cpus!r}: must be between 0.01 and {ncpu}, the CPUs there are")
    return spec.Limits(memory=mem, pids=pids_limit, cpus=float(cpus) if cpus is not None else None)


_live: weakref.WeakSet[Container] = weakref.WeakSet()


def _remove_all_at_exit() -> None:
    for c in list(_live):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            c.remove()


atexit.register(_remove_all_at_exit)


class Container:
    """A container of ``image``. Nothing happens until ``run()`` or ``start()``."""

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
        network: str = "none",
        ports: Optional[Mapping[int, Optional[int]]] = None,
        memory: Union[int, str, None] = None,
        pids_limit: Optional[int] = None,
        cpus: Optional[float] = None,
        cap_add: Sequence[str] = (),
        cap_drop: Sequence[str] = (),
        privileged: bool = False,
        init: bool = False,
        rootless: Optional[bool] = None,
    ) -> None:
        if not isinstance(image, Image):
            raise TypeError(f"image must be a pyrt.Image, not {type(image).__name__}")
        if isinstance(command, str):
            raise TypeError("command must be a list of arguments, not a str")
        if ports is not None:
            raise PyrtError("ports=: published ports are not supported by this pyrt yet")
        self._limits = _limits(memory, pids_limit, cpus)
        if init:
            raise PyrtError("init=True: the built-in init is not supported by this pyrt yet")
        if rootless is None:
            rootless = os.geteuid() != 0
        if rootless:
            raise PyrtError(
                "rootless containers (user namespaces) are not supported by this pyrt yet"
            )
        if network not in spec.NETWORK_MODES:
            raise PyrtError(
                f"network={network!r}: supported modes are {', '.join(spec.NETWORK_MODES)}"
            )
        for m in mounts:
            if not isinstance(m, (Bind, Tmpfs)):
                raise TypeError(f"mounts must be pyrt.Bind or pyrt.Tmpfs, not {m!r}")
            if not m.target.startswith("/"):
                raise PyrtError(f"mount target must be an absolute path: {m.target!r}")
        self.image = image
        self.id = secrets.token_hex(16)
        self.name = name
        self.args = command_for(
            image.config,
            list(command) if command is not None else None,
            list(entrypoint) if entrypoint is not None else None,
        )
        if not self.args:
            raise PyrtError("no command: the image has no Entrypoint or Cmd, and none was given")
        self._opts: dict[str, Any] = {
            "env": dict(env or {}),
            "workdir": workdir,
            "user": user,
            "hostname": hostname,
            "mounts": list(mounts),
            "readonly_rootfs": readonly_rootfs,
            "network": network,
            "cap_add": list(cap_add),
            "cap_drop": list(cap_drop),
            "privileged": privileged,
        }
        # Validate what can be validated before anything exists.
        spec.capability_set(cap_add, cap_drop, privileged)
        for m in mounts:
            if isinstance(m, Tmpfs):
                m.to_spec()
        self._proc: Optional[_core.Process] = None
        self._dir: Optional[ContainerDir] = None
        self._returncode: Optional[int] = None
        self._removed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<pyrt.Container {self.name or self.id[:12]} {self.status}>"

    # --- the spec ---------------------------------------------------------------------

    def build_spec(self, root_dir: str, cgroup: bool = False) -> dict[str, Any]:
        """The OCI runtime spec of this container, its root mounted on ``root_dir``; with
        ``cgroup`` (implied by limits) in a cgroup of its own."""
        o = self._opts
        img = self.image
        try:
            ids = img.resolve_user(o["user"] or img.config.user)
        except ValueError as e:
            raise SpawnError(str(e), stage="user", errno=22) from None
        hostname = o["hostname"] or self.id[:12]
        base_env = {"PATH": spec.DEFAULT_PATH, "HOSTNAME": hostname, "HOME": ids.home}
        env = spec.merge_env(base_env, img.config.env, o["env"])
        cwd = o["workdir"] or img.config.workdir or "/"
        if not cwd.startswith("/"):
            raise PyrtError(f"workdir must be an absolute path: {cwd!r}")
        extra_mounts: list[dict[str, Any]] = []
        annotations = {"run.pyrt.cwd.create": "true"}
        assert self._dir is not None
        if img.kind == "host":
            root = spec.RootSpec(path=root_dir, readonly=True, bind="/")
            # The host's /tmp and /run hold its sockets and scratch files: give the container
            # its own, writable ones instead.
            extra_mounts = [Tmpfs("/tmp").to_spec(), Tmpfs("/run", mode=0o755).to_spec()]
        else:
            root = spec.RootSpec(
                path=root_dir,
                readonly=bool(o["readonly_rootfs"]),
                lower=img.lower,
                upper=str(self._dir.upper),
                work=str(self._dir.work),
            )
        privileged = bool(o["privileged"])
        c = spec.ContainerSpec(
            root=root,
            process=spec.ProcessSpec(
                args=self.args,
                env=env,
                cwd=cwd,
                uid=ids.uid,
                gid=ids.gid,
                additional_gids=ids.additional_gids,
                capabilities=spec.capability_set(o["cap_add"], o["cap_drop"], privileged),
                no_new_privileges=not privileged,
            ),
            hostname=hostname,
            network=o["network"],
            mounts=extra_mounts + [m.to_spec() for m in o["mounts"]],
            masked_paths=() if privileged else spec.DEFAULT_MASKED_PATHS,
            readonly_paths=() if privileged else spec.DEFAULT_READONLY_PATHS,
            annotations=annotations,
            cgroups_path=f"pyrt-{self.id}" if cgroup or self._limits else None,
            resources=self._limits,
        )
        return spec.build(c)

    # --- starting -----------------------------------------------------------------------

    def _spawn(self, stdin: int, stdout: int = -1, stderr: int = -1, cgroup: bool = False) -> None:
        """Creates the container's directory and starts it. With stdout/stderr of -1, both go
        to the container's log file. A cgroup is made when there are limits or ``cgroup``
        asks for one (a detached container, for stats): it costs ~0.7 ms on cgroup v1."""
        with self._lock:
            if self._removed:
                raise PyrtError(f"container {self.id[:12]} was removed")
            if self._proc is not None:
                raise PyrtError(f"container {self.id[:12]} was already started")
            d = ContainerDir.create(self.id, overlay=self.image.kind != "host")
            log = -1
            try:
                if stdout < 0:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    log = stdout = stderr = os.open(d.log, flags, 0o600)
                self._dir = d
                doc = self.build_spec(str(d.rootfs), cgroup)
                self._proc = _core.spawn(json.dumps(doc), stdin, stdout, stderr)
                d.record_cgroups(self._proc.cgroup_paths())
            except BaseException:
                self._dir = None
                d.remove()
                raise
            finally:
                if log >= 0:
                    os.close(log)
            _live.add(self)

    def start(self) -> Container:
        """Starts detached: stdout and stderr go to the container's log (see ``logs()``).
        Returns once the command runs."""
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._spawn(devnull, cgroup=True)
        finally:
            os.close(devnull)
        return self

    def run(
        self,
        input: Input = None,
        timeout: Optional[float] = None,
        check: bool = False,
        text: bool = False,
    ) -> Result:
        """Runs to completion, like ``subprocess.run``; the container is removed afterwards.
        ``timeout`` kills the whole container and raises TimeoutExpired."""
        if isinstance(input, str):
            input = input.encode()
        if input is not None:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self._spawn(in_r, out_w, err_w)
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            assert self._proc is not None
            # communicate takes in_w over and closes it.
            stdin_fd, in_w = in_w, -1
            out, err, timed_out = _core.communicate(stdin_fd, input, out_r, err_r, timeout)
            if timed_out:
                self.kill(signal.SIGKILL)
                more_out, more_err, _ = _core.communicate(-1, None, out_r, err_r, None)
                self.wait()
                assert timeout is not None
                raise TimeoutExpired(self.args, timeout, out + more_out, err + more_err)
            code = self.wait()
            oom = self._proc.oom_kills() > 0
        finally:
            for fd in (in_w, out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            self.remove()
        res = Result(
            self.args,
            code,
            out.decode("utf-8", "replace") if text else out,
            err.decode("utf-8", "replace") if text else err,
            oom_killed=oom,
        )
        if check:
            res.check_returncode()
        return res

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
            return "running"
        return "exited"

    def wait(self, timeout: Optional[float] = None) -> int:
        """The return code (exit status, or -SIGNUM). On timeout raises TimeoutExpired and the
        container keeps running, as ``subprocess.Popen.wait``."""
        if self._returncode is not None:
            return self._returncode
        if self._proc is None:
            raise PyrtError(f"container {self.id[:12]} was not started")
        code = self._proc.wait(timeout)
        if code is None:
            assert timeout is not None
            raise TimeoutExpired(self.args, timeout)
        self._returncode = code
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the container's first process (SIGKILL ends the whole container)."""
        if self._proc is not None and self._returncode is None:
            self._proc.kill(int(sig))

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the return code."""
        if self._proc is None:
            raise PyrtError(f"container {self.id[:12]} was not started")
        self.kill(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except TimeoutExpired:
            self.kill(signal.SIGKILL)
            return self.wait()

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

    def logs(self) -> bytes:
        """Everything the container wrote so far, stdout and stderr interleaved."""
        if self._dir is None:
            return b""
        try:
            with open(self._dir.log, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def remove(self) -> None:
        """Kills the container if needed and frees everything it had. Idempotent."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
            if self._proc is not None:
                if self._returncode is None:
                    self._proc.kill(signal.SIGKILL)
                    self._returncode = self._proc.wait(None)
                self._proc.destroy_cgroup()
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


def run(
    image: Image,
    command: Optional[Sequence[str]] = None,
    input: Input = None,
    timeout: Optional[float] = None,
    check: bool = False,
    text: bool = False,
    **options: Any,
) -> Result:
    """Runs ``command`` in a fresh container of ``image`` and removes it; like subprocess.run."""
    return Container(image, command, **options).run(
        input=input, timeout=timeout, check=check, text=text
    )
