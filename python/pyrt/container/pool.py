"""Warm pools: started containers kept ready, so that a test gets a fresh sandbox without
waiting for one to start.

A pool keeps ``size`` started containers ready. ``acquire`` hands out one of them; a
background thread starts another to take its place. When the caller is done, the container is
reset (every process killed, a fresh writable layer, the command started again: as good as
new) and goes back to the ready ones, or is removed when the pool is already full: a container
is never handed out dirty. Two threads do the starting and resetting, and start each
container's exec server before handing it out, so a pool costs its owner two threads and no
work on the caller's path but the hand-over (even the first exec goes through the server).

Why two: a reset mostly waits (for the old container's end, the new one's setup, its exec
server), and while the caller's thread runs Python, getting the GIL back after a wait costs
the worker up to the switch interval (5 ms). One worker then fell behind a suite whose tests
took 7 ms each, and every test waited ~1.2 ms in ``acquire``; with two, ~0. A reset's waits
are one call of the core since (``_core.respawn``: the end, the start, the exec server and
the state file), so that a worker asks for the GIL back once a reset, not five times.

Containers of a pool are ordinary containers of the owning process: removed by ``close()``, at
interpreter exit, and by the owner's reaper when the owner is killed."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from pyrt.config import checks
from pyrt.container.container import Container
from pyrt.errors import InvalidOption, PyrtError, TimeoutExpired
from pyrt.image import Image

#: More containers than this ready at once is a mistake, not a pool.
MAX_SIZE = 1024

#: Threads that start and reset a pool's containers (see the module's docstring).
WORKERS = 2

_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


class Pool:
    """``size`` started containers of ``image`` running ``command``, ready to hand out; every
    other keyword is a ``Container`` option, checked now (before anything starts)."""

    def __init__(
        self,
        image: Image,
        command: Optional[Sequence[str]] = None,
        size: int = 4,
        **options: Any,
    ) -> None:
        self._size = checks.whole(size, "size", 1, MAX_SIZE)
        if options.get("name") is not None:
            raise InvalidOption("name=: the containers of a pool cannot share one name")
        # Made now so that a bad option raises here; the first to start.
        first = Container(image, command, **options)
        self._image, self._command, self._options = image, command, options
        self.args = first.args
        self._cond = threading.Condition()
        self._ready: deque[Container] = deque()
        self._returned: deque[Container] = deque()
        self._unstarted: list[Container] = [first]
        self._busy: set[Container] = set()  # handed out
        #: Every container the pool made: one handed out before ``close()`` may still come back.
        self._made: weakref.WeakSet[Container] = weakref.WeakSet([first])
        self._starting = 0
        self._error: Optional[BaseException] = None
        self._closed = False
        self._owner = os.getpid()
        self._workers = [
            threading.Thread(target=self._work, name="pyrt-pool", daemon=True)
            for _ in range(WORKERS)
        ]
        _pools.add(self)
        for w in self._workers:
            w.start()

    def __repr__(self) -> str:
        with self._cond:
            return (f"<pyrt.Pool {' '.join(self.args)[:40]!r} ready={len(self._ready)} "
                    f"busy={len(self._busy)} size={self._size}>")  # fmt: skip

    # --- handing out ----------------------------------------------------------------------

    def acquire(
        self, timeout: Optional[float] = None
    ) -> contextlib.AbstractContextManager[Container]:
        """A started container, fresh as if just started; reset (or replaced) for the next
        caller when the block ends. Waits for one at most ``timeout`` seconds (None: as long as
        it takes), then raises ``TimeoutExpired``. A wrong ``timeout``, or a closed or forked
        pool, raises here, at the call, not only when the block is entered."""
        self.check_usable(timeout)
        return self._acquired(timeout)

    @contextlib.contextmanager
    def _acquired(self, timeout: Optional[float]) -> Iterator[Container]:
        c = self.take(timeout)
        try:
            yield c
        finally:
            self.give_back(c)

    def check_usable(self, timeout: Optional[float] = None) -> Optional[float]:
        """``timeout`` checked (TypeError, InvalidOption); PyrtError for a pool that is closed,
        or was made by another process (this one is its fork)."""
        t = checks.timeout(timeout)
        if os.getpid() != self._owner:
            raise PyrtError(f"this pool belongs to process {self._owner} (it was forked)")
        if self._closed:
            raise PyrtError("the pool is closed")
        return t

    def take(self, timeout: Optional[float] = None) -> Container:
        """What ``acquire`` does on entry: the caller then owes ``give_back(c)``."""
        timeout = self.check_usable(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise PyrtError("the pool is closed")
            while not self._ready:
                if self._closed:
                    raise PyrtError("the pool is closed")
                if self._error is not None:
                    # The pool cannot start its containers: say why rather than wait forever.
                    err, self._error = self._error, None
                    self._cond.notify_all()
                    raise err
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    assert timeout is not None
                    raise TimeoutExpired(self.args, timeout)
                # (A wait takes at most threading.TIMEOUT_MAX, ~292 years: beyond, no limit.)
                self._cond.wait(None if left is None or left >= threading.TIMEOUT_MAX else left)
            c = self._ready.popleft()
            self._busy.add(c)
            self._cond.notify_all()  # one fewer ready: the worker starts another
            return c

    def give_back(self, c: Container) -> None:
        """Returns a container that ``take`` handed out: it is reset before anyone gets it."""
        if not isinstance(c, Container):
            raise TypeError(f"give_back takes a pyrt.Container, not {type(c).__name__}")
        with self._cond:
            if c not in self._busy:
                if self._closed and c in self._made:
                    return  # handed out before close(), which removed it
                raise PyrtError(f"container {c.id[:12]} is not one this pool handed out")
            self._busy.discard(c)
            if self._closed:
                closed = True
            else:
                closed = False
                self._returned.append(c)
                self._cond.notify_all()
        if closed:
            c.remove()

    # --- the worker -----------------------------------------------------------------------

    def _wanted(self) -> int:
        return self._size - len(self._ready) - self._starting

    def _work(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._closed
                    and not self._returned
                    and (self._wanted() <= 0 or self._error is not None)
                ):
                    self._cond.wait()
                if self._closed:
                    return
                c: Optional[Container]
                if self._returned:
                    c = self._returned.popleft()
                    # Kept (reset) even when the pool is just full: one ready beyond ``size``
                    # spares the start-and-remove that a sequential user would otherwise cause
                    # at every return (one started while the container was out, the returned one
                    # removed for it).
                    keep = self._wanted() >= 0
                else:
                    c = self._unstarted.pop() if self._unstarted else None
                    keep = True
                if keep:
                    self._starting += 1
            try:
                self._prepare(c, keep)
            except Exception as e:  # handed to the next take: it says why none is ready
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
            finally:
                if keep:
                    with self._cond:
                        self._starting -= 1

    def _prepare(self, c: Optional[Container], keep: bool) -> None:
        """Makes ``c`` (a returned container, or None for a new one) ready, or removes it.
        Only a failure to start a new one is reported (to the next ``take``): a returned one
        that cannot be reset (removed by its user, tty=True) is replaced instead."""
        if c is not None and c.status != "created":
            try:
                if not keep:
                    raise PyrtError("the pool is full")
                c._reset(serve=True)
            except Exception:
                with contextlib.suppress(Exception):
                    c.remove()
                return  # the next round starts a new one if one is wanted
        else:
            made = c or Container(self._image, self._command, **self._options)
            with self._cond:
                self._made.add(made)
            try:
                c = made._start(detached=False, serve=True)
            except Exception:
                with contextlib.suppress(Exception):
                    made.remove()
                raise
        # Its exec server too (started with it above, `serve`; here when it could not be
        # then), rather than at its second exec on the caller's path (a sandbox is exec'd into
        # at least once). Without one (it could not start, the command has exited), execs go
        # the ordinary way, which reports what is wrong.
        with contextlib.suppress(PyrtError, OSError):
            c._warm_exec_server()
        with self._cond:
            closed = self._closed
            if not closed:
                self._ready.append(c)
                self._cond.notify_all()
        if closed:
            c.remove()

    # --- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Removes every container the pool made, handed out or not; idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for w in self._workers:
            if w.is_alive() and threading.current_thread() is not w:
                # A start or reset in progress finishes first (each is bounded by the core).
                w.join()
        with self._cond:
            left = [*self._ready, *self._returned, *self._busy, *self._unstarted]
            self._ready.clear()
            self._returned.clear()
            self._busy.clear()
            self._unstarted.clear()
        for c in left:
            with contextlib.suppress(Exception):
                c.remove()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_all_at_exit() -> None:
    for p in list(_pools):
        with contextlib.suppress(Exception):
            p.close()


# Registered after container's own exit hook, so it runs before it (atexit is last-in,
# first-out): the workers stop before the containers they might still be starting are removed.
atexit.register(_close_all_at_exit)
