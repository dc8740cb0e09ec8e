"""The pipes a captured process is started with (``run``, ``exec``, sync and asyncio alike)."""

from __future__ import annotations

import os
from typing import Optional, Union


class Pipes:
    """stdin (a pipe when there is input, else /dev/null), stdout and stderr pipes.

    ``child`` are the ends the process gets; close them with ``started()`` once it has them.
    ``take_stdin()`` hands the write end of stdin over (the I/O loop closes it at the end of the
    input). ``close()`` closes whatever is still ours.
    """

    def __init__(self, input: Union[bytes, str, None]) -> None:
        self.input: Optional[bytes] = input.encode() if isinstance(input, str) else input
        if self.input is not None:
            self.in_r, self.in_w = os.pipe2(os.O_CLOEXEC)
        else:
            self.in_r, self.in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)

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
