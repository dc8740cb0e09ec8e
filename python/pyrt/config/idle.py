"""A command that is never executed: what a container kept only to exec into (a pool's, the
pytest ``sandbox``) says it runs.

Given as the command of a container with ``init=True`` (and no entrypoint before it), pyrt's
init stays pid 1 and runs nothing: no program of the image starts at each start and reset (a
dynamically linked ``sleep`` costs ~0.5 ms of CPU here, most of it the C library probing the
CPU), and the image need not have one. The container ends, as ``sleep`` under init would,
on a signal whose default action ends a process. Without init it is an ordinary command."""

from __future__ import annotations


class Idle(list[str]):
    """A command list that pyrt's init stands in for (see the module)."""


#: Sleep as long as a 32-bit time allows: what the container reports as its command.
IDLE = Idle(["sleep", "2147483647"])
