"""The pipes a captured process is started with (``run``, ``exec``, sync and asyncio alike)."""

from __future__ import annotations

import os
import subprocess
from typing import IO, Any, Optional, Union

#: As in ``subprocess``: capture into the result (the default), discard, or (for stderr) merge
#: into stdout.
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

#: Where an output goes: PIPE (or None), DEVNULL, a descriptor, or a file object with fileno().
Target = Union[None, int, IO[Any]]


def _output(target: object, what: str) -> tuple[int, int]:
    """(our read end or -1, the child's write end) for one output."""
    if target is None or target == PIPE:
        r, w = os.pipe2(os.O_CLOEXEC)
        return r, w
    if target == DEVNULL:
        return -1, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    if isinstance(target, bool):
        raise TypeError(f"{what} must be pyrt.PIPE, pyrt.DEVNULL, a descriptor or a file")
    if isinstance(target, int):
        if target < 0:
            raise ValueError(f"{what}={target}: not a descriptor")
        return -1, os.dup(target)  # ours to close; the caller's stays open
    fileno = getattr(target, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"{what} must be pyrt.PIPE, pyrt.DEVNULL, a descriptor or a file object with "
            f"fileno(), not {type(target).__name__}"
        )
    flush = getattr(target, "flush", None)
    if flush is not None:
        flush()  # what Python buffered comes before what the process writes
    return -1, os.dup(fileno())


class Pipes:
    """stdin (a pipe when there is input, else /dev/null), stdout and stderr pipes.

    ``child`` are the ends the process gets; close them with ``started()`` once it has them.
    ``take_stdin()`` hands the write end of stdin over (the I/O loop closes it at the end of the
    input). ``close()`` closes whatever is still ours.
    """

    def __init__(
        self, input: Union[bytes, str, None], stdout: Target = None, stderr: Target = None
    ) -> None:
        self.input: Optional[bytes] = input.encode() if isinstance(input, str) else input
        self.in_r = self.in_w = self.out_r = self.out_w = self.err_r = self.err_w = -1
        try:
            if self.input is not None:
                self.in_r, self.in_w = os.pipe2(os.O_CLOEXEC)
            else:
                self.in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            self.out_r, self.out_w = _output(stdout, "stdout")
            if stderr == STDOUT:
                self.err_w = os.dup(self.out_w)
            else:
                self.err_r, self.err_w = _output(stderr, "stderr")
        except BaseException:
            self.close()
            raise

    @property
    def captured(self) -> tuple[bool, bool]:
        """Whether stdout and stderr are captured (else the result has None for them)."""
        return self.out_r >= 0, self.err_r >= 0

    @property
    def child(self) -> tuple[int, int, int]:
        return self.in_r, self.out_w, self.err_w

    def started(self) -> None:
        for name in ("in_r", "out_w", "err_w"):
            self._close(name)

    def take_stdin(self) -> int:
        fd, self.in_w = self.in_w, -1
        return fd

    def close(self) -> None:
        for name in ("in_r", "out_w", "err_w", "in_w", "out_r", "err_r"):
            self._close(name)

    def _close(self, name: str) -> None:
        fd = getattr(self, name)
        if fd >= 0:
            os.close(fd)
            setattr(self, name, -1)
