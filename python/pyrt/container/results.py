"""What running a command gives back: ``Result`` (like ``subprocess.CompletedProcess``) and a
container's ``Stats``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from pyrt.errors import ContainerError


class Result:
    """What ``run`` returns, like ``subprocess.CompletedProcess``."""

    def __init__(
        self,
        args: list[str],
        returncode: int,
        stdout: Union[bytes, str, None],
        stderr: Union[bytes, str, None],
        oom_killed: bool = False,
    ) -> None:
        self.args = args
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.oom_killed = oom_killed

    def __repr__(self) -> str:
        parts = [f"args={self.args!r}", f"returncode={self.returncode}"]
        for name in ("stdout", "stderr"):
            v = getattr(self, name)
            if v is not None:
                r = repr(v)
                parts.append(f"{name}={r if len(r) <= 200 else r[:197] + '...'}")
        if self.oom_killed:
            parts.append("oom_killed=True")
        return f"Result({', '.join(parts)})"

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
