"""Type stub of pyrt._core, the Rust extension (rust/python/src/lib.rs). Checked against the
built module with mypy.stubtest in CI."""

import os
from collections.abc import Callable
from typing import Optional

from typing_extensions import final

__all__ = [
    "CHILD_SIZE",
    "ExecServer",
    "PortForward",
    "Process",
    "cgroup_freeze",
    "communicate",
    "exec",
    "exec_server",
    "forward_tcp",
    "forward_tcp_in",
    "log_from",
    "log_pipe",
    "new_netns",
    "new_userns_netns",
    "open_in_root",
    "pid_start_time",
    "plan",
    "remove_cgroup",
    "respawn",
    "signal_recorded",
    "spawn",
    "tcp_connect",
    "tcp_probe",
    "unpack_layer",
    "write_replacing",
]

CHILD_SIZE: int

def plan(spec_json: str) -> str: ...
def spawn(
    spec_json: str,
    stdin: int,
    stdout: int,
    stderr: int,
    hold: bool = False,
    seccomp_json: Optional[str] = None,
) -> Process: ...
def respawn(
    spec_json: str,
    stdin: int,
    stdout: int,
    stderr: int,
    seccomp_json: Optional[str] = None,
    replaces: Optional[Process] = None,
    server: Optional[ExecServer] = None,
    serve: bool = False,
    state: Optional[tuple[str, str]] = None,
) -> Optional[tuple[Process, Optional[ExecServer], Optional[int]]]: ...
def exec(
    target: int,
    process_json: str,
    stdin: int,
    stdout: int,
    stderr: int,
    cgroup_paths: list[str] = ...,
    seccomp_json: Optional[str] = None,
    server: Optional[ExecServer] = None,
) -> Process: ...
def exec_server(
    target: int, cgroup_paths: list[str] = ..., seccomp_json: Optional[str] = ...
) -> ExecServer: ...
def communicate(
    stdin: int,
    input: Optional[bytes],
    stdout: int,
    stderr: int,
    timeout: Optional[float] = None,
    limit: Optional[int] = None,
) -> tuple[bytes, bytes, bool, Optional[str]]: ...
def log_pipe(path: str, cap: int) -> tuple[int, int]: ...
def log_from(fd: int, path: str, cap: int) -> int: ...
def forward_tcp(netns_fd: int, addr: str, port: int, target: int) -> PortForward:
    """Listens on ``addr:port`` (0: a free port), forwarding to 127.0.0.1:``target`` inside."""

def forward_tcp_in(userns_fd: int, netns_fd: int, addr: str, port: int, target: int) -> PortForward:
    """``forward_tcp`` into a namespace of another user namespace (a rootless container's):
    the loop runs in a process of its own that enters ``userns_fd``, then ``netns_fd``."""

@final
class PortForward:
    @property
    def port(self) -> int: ...
    def close(self) -> None: ...

def new_netns() -> int:
    """A new network namespace with ``lo`` up, as a descriptor the caller owns and closes."""

def new_userns_netns(
    uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]]
) -> tuple[int, int]:
    """A new user namespace with these (inside, outside, count) maps, and a network namespace
    that belongs to it: two descriptors the caller owns and closes."""

def cgroup_freeze(paths: list[str], freeze: bool) -> bool:
    """Freezes (or thaws) the container cgroup at ``paths``; False without a freezer."""

def remove_cgroup(paths: list[str]) -> None:
    """Kills what is left in the container cgroup at ``paths`` and removes its directories."""

def pid_start_time(pid: int) -> Optional[int]:
    """The start time of process ``pid`` (clock ticks after boot), None without one."""

def write_replacing(dest: str | os.PathLike[str], data: str) -> None:
    """Replaces the file ``dest`` with ``data`` whole (a temporary file beside it, exchanged):
    a reader sees the old contents or the new, never half."""

def signal_recorded(pid: int, start: int, sig: int) -> None:
    """Signals the process recorded as (pid, start) through a pidfd; ProcessLookupError once
    it is gone."""

def tcp_probe(pid: int, port: int, timeout: float) -> bool: ...
def tcp_connect(netns: str, port: int, timeout: float) -> int:
    """A connected socket to 127.0.0.1:``port`` inside the namespace at ``netns``."""

def open_in_root(dirfd: int, path: str, flags: int, mode: int = 0) -> int: ...
def unpack_layer(
    fd: int,
    dest: str,
    what: str,
    whiteouts: str,
    lowers: list[str],
    owner: Optional[tuple[int, int]],
    devices: bool,
    to_host: bool,
    max_entries: int,
    max_bytes: int,
    as_root: bool,
    privileged: bool,
    progress: Optional[Callable[[int], object]] = None,
) -> tuple[int, int, list[str], int, str, str]: ...

@final
class ExecServer:
    @property
    def pid(self) -> Optional[int]: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...

@final
class Process:
    @property
    def pid(self) -> int: ...
    def dup_pidfd(self) -> int: ...
    @property
    def returncode(self) -> Optional[int]: ...
    def wait(self, timeout: Optional[float] = None) -> Optional[int]: ...
    def release(self) -> None: ...
    def kill(self, sig: int) -> None: ...
    def stats(self) -> Optional[tuple[int, int, int]]: ...
    def oom_kills(self) -> int: ...
    def cgroup_paths(self) -> list[str]: ...
    def destroy_cgroup(self) -> None: ...
    def freeze(self) -> bool: ...
    def thaw(self) -> None: ...
    def frozen(self) -> bool: ...
    def update(self, resources_json: str) -> list[str]: ...
