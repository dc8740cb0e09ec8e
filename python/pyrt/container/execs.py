"""Exec into a running container: the checks and the process's JSON (built once per
container for a plain exec), and the container's exec server, which the core forks execs from
(written once here for ``pyrt.Container`` and ``pyrt.aio``'s)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

from pyrt import _core
from pyrt.config import checks
from pyrt.container import lifecycle
from pyrt.container.results import Result
from pyrt.container.stdio import Target
from pyrt.container.steps import Input
from pyrt.errors import PyrtError, SpawnError
from pyrt.oci import spec

if TYPE_CHECKING:
    from pyrt.config.options import ContainerOptions
    from pyrt.container.steps import ContainerSteps
    from pyrt.host.userns import IdMaps
    from pyrt.image import Image


class ContainerExecs:
    """The exec method of ``pyrt.Container`` and what it rests on (a base class of it)."""

    if TYPE_CHECKING:
        id: str
        image: Image
        _o: ContainerOptions
        _proc: Optional[_core.Process]
        _removed: bool
        _paused: bool
        _userns: Optional[IdMaps]
        _process: Optional[spec.ProcessSpec]
        _exec_rest: Optional[tuple[spec.ProcessSpec, str]]
        _seccomp_json: Optional[str]
        _server: Optional[tuple[_core.Process, Optional[_core.ExecServer]]]
        _server_lock: threading.Lock
        _server_asked: Optional[_core.Process]

        @property
        def status(self) -> str: ...
        @property
        def _steps(self) -> ContainerSteps: ...

    def exec(
        self,
        command: Sequence[str],
        input: Input = None,
        timeout: Optional[float] = None,
        check: bool = False,
        text: bool = False,
        *,
        env: Optional[Mapping[str, str]] = None,
        user: Optional[str] = None,
        workdir: Optional[str] = None,
        stdout: Target = None,
        stderr: Target = None,
    ) -> Result:
        """Runs ``command`` inside the running container (all its namespaces and its cgroup),
        with the container's environment plus ``env``, as its user or ``user``, in its working
        directory or ``workdir``. ``timeout`` kills only this process. ``stdout``/``stderr``
        as for ``run``."""
        return lifecycle.drive(
            self._steps.exec(command, input, timeout, check, text,
                             env=env, user=user, workdir=workdir, stdout=stdout, stderr=stderr)
        )  # fmt: skip

    def _exec_starter(
        self,
        command: Sequence[str],
        env: Optional[Mapping[str, str]],
        user: Optional[str],
        workdir: Optional[str],
    ) -> Callable[[int, int, int], _core.Process]:
        """Checks and prepares an exec (for this class and pyrt.aio's); the returned function
        starts it with the given stdin, stdout and stderr."""
        command = checks.args(command, "command")
        env = checks.env(env)
        user = checks.user(user)
        if workdir is not None:
            workdir = checks.container_path(workdir, "workdir")
        proc = self._proc
        if proc is None or self._removed or self.status != "running":
            raise PyrtError(f"container {self.id[:12]} is {self.status}, not running"
                            + (" (resume() it first)" if self._paused else ""))  # fmt: skip
        if not env and user is None and workdir is None:
            doc = self._plain_exec_doc(command)
        else:
            doc = json.dumps(self._exec_process(list(command), env, user, workdir))
        paths, pid = proc.cgroup_paths(), proc.pid
        # One text per profile (see assemble.Assembled): the core caches the program by it.
        sc = self._seccomp_json
        server = self._exec_server(proc, paths, second=True)

        def start(i: int, o: int, e: int) -> _core.Process:
            return _core.exec(pid, doc, i, o, e, paths, sc, server=server)

        return start

    def _exec_server(
        self, proc: _core.Process, paths: list[str], second: bool = False
    ) -> Optional[_core.ExecServer]:
        """The exec server of the running first process ``proc`` (see the core's
        ``child::serve``). It saves each exec the spawn of a new pyrt-child and its joins: in a
        container with a user namespace, also a second fork (0.2-0.3 ms of 1.6 here); without
        one, about 0.06 ms of 1.3; and the attach of the seccomp filter (0.12 ms), which the
        server makes once for all its forks (it is given the container's). Starting one costs
        about two such savings in a user namespace, so it is started at the second exec
        (``second``), not the first: a sandbox exec'd once never pays for one. None for a
        container with a terminal (an interactive one, `pyrt run -it`, not a sandbox exec'd
        into over and over) or when not possible; the core falls back to the ordinary exec when
        it has ended."""
        if self._o.tty:
            return None
        # Its own lock, not the container's: a healthcheck's exec comes here from the
        # checker's thread, which reset() and remove() wait for while holding the container's.
        with self._server_lock:
            server = self._server
            if server is not None and server[0] is proc:
                return server[1]
            self._close_server_locked()  # one of an earlier first process
            if second and (self._server_asked is not proc):
                self._server_asked = proc
                return None
            try:
                made = _core.exec_server(proc.pid, paths, self._seccomp_json)
            except (SpawnError, OSError):
                made = None  # an exec then starts the ordinary way, which reports why
            self._server = (proc, made)
            return made

    def _adopt_server(self, proc: _core.Process, made: Optional[_core.ExecServer]) -> None:
        """Takes ``made``, the exec server the core started with ``proc`` (None: it could
        not be, and execs go the ordinary way, as in ``_exec_server``)."""
        with self._server_lock:
            self._close_server_locked()
            self._server = (proc, made)

    def _warm_exec_server(self) -> None:
        """Starts the exec server of a running container now, rather than at its second exec: a
        pool does this in its own thread after each start and reset, so that even a test's
        first exec goes through one, and the start costs the test nothing."""
        proc = self._proc
        if proc is not None and proc.wait(0) is None:
            self._exec_server(proc, proc.cgroup_paths())

    def _close_server(self) -> None:
        """Ends the exec server (update)."""
        with self._server_lock:
            self._close_server_locked()

    def _stop_server(self) -> Optional[_core.ExecServer]:
        """Signals the exec server to end and forgets it (reset, remove); the caller closes
        the returned one after the container's own end, which its exit overlaps (each takes
        ~0.3 ms here, mostly the exit's)."""
        with self._server_lock:
            server, self._server = self._server, None
        if server is None or server[1] is None:
            return None
        server[1].kill()
        return server[1]

    def _close_server_locked(self) -> None:
        if self._server is not None and self._server[1] is not None:
            self._server[1].close()
        self._server = None

    def _plain_exec_doc(self, command: Sequence[str]) -> str:
        """The JSON of an exec with nothing but its arguments given: the container's exec
        process, encoded once per process spec, with these arguments put in front. (Building
        and encoding the whole process was a third of an exec's Python time.)"""
        assert self._process is not None
        cached = self._exec_rest
        if cached is None or cached[0] is not self._process:
            rest = self._exec_process(["-"], None, None, None)
            del rest["args"]
            cached = (self._process, json.dumps(rest)[1:])
            self._exec_rest = cached
        return '{"args":' + json.dumps(list(command)) + "," + cached[1]

    def _exec_process(
        self,
        args: list[str],
        env: Optional[Mapping[str, str]],
        user: Optional[str],
        workdir: Optional[str],
    ) -> dict[str, Any]:
        assert self._process is not None
        ids = None
        if user is not None:
            try:
                ids = self.image.resolve_user(user)
            except ValueError as e:
                raise SpawnError(str(e), stage="user", errno=22) from None
        return spec.exec_process(spec.process_dict(self._process), args, env, ids, workdir)
