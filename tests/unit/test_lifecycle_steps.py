"""The two drivers of a container's steps (``pyrt.container.lifecycle``): the caller's
thread and the event loop give the same answers, throw failures into the steps, and hand
over what a cancelled blocking call made before the cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pyrt import aio
from pyrt.container import lifecycle
from pyrt.container.lifecycle import Blocking, Chunk, Communicate, Sleep, Steps


def sample(log: list[Any]) -> Steps[int]:
    got = yield Blocking(lambda: 40)
    log.append(got)
    yield Sleep(0.001)
    try:
        yield Blocking(lambda: 1 // 0)
    except ZeroDivisionError:
        log.append("thrown in")
    r, w = os.pipe2(os.O_CLOEXEC)
    r2, w2 = os.pipe2(os.O_CLOEXEC)
    os.close(w2)
    try:
        out, err, timed_out, over = yield Communicate(w, b"", r, r2, 5)
    finally:
        os.close(r)
        os.close(r2)
    log.append((out, err, timed_out, over))
    return int(got) + 2


def both(make: Callable[[list[Any]], Steps[int]]) -> tuple[Any, Any]:
    sync_log: list[Any] = []
    async_log: list[Any] = []
    a = lifecycle.drive(make(sync_log))
    b = asyncio.run(aio.drive(make(async_log)))
    assert sync_log == async_log
    return a, b


def test_both_drivers_answer_alike() -> None:
    assert both(sample) == (42, 42)


def endless(limit: int, stream: str) -> Callable[[list[Any]], Steps[int]]:
    """Steps reading a pipe fed without end (by a thread) under ``limit``."""

    def make(log: list[Any]) -> Steps[int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        stop = threading.Event()

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):
                while not stop.is_set():
                    os.write(w, b"y\n" * 4096)

        t = threading.Thread(target=feed)
        t.start()
        try:
            pipes = (r, -1) if stream == "stdout" else (-1, r)
            out, err, timed_out, over = yield Communicate(-1, None, *pipes, 30, limit)
        finally:
            os.close(r)  # (the feeder's next write fails)
            stop.set()
            t.join()
            os.close(w)
        log.append((len(out), len(err), timed_out, over))
        return len(out) + len(err)

    return make


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_both_drivers_stop_reading_past_the_limit(stream: str) -> None:
    """A stream that never ends is read no further than the limit, by either driver, which
    names it; no more than the limit is kept."""
    assert both(endless(100_000, stream)) == (100_000, 100_000)


def test_an_exception_not_caught_by_the_steps_reaches_the_caller() -> None:
    def failing() -> Steps[None]:
        try:
            yield Blocking(lambda: {}["missing"])
        finally:
            cleaned.append(True)

    cleaned: list[bool] = []
    with pytest.raises(KeyError):
        lifecycle.drive(failing())
    with pytest.raises(KeyError):
        asyncio.run(aio.drive(failing()))
    assert cleaned == [True, True]


def test_a_cancelled_blocking_call_hands_over_what_it_made() -> None:
    """A spawn cannot be stopped half way: the steps get the process it made, then the
    cancellation, so that they can kill and wait for it."""
    seen: list[str] = []

    def steps() -> Steps[None]:
        try:
            made = yield Blocking(lambda: (time.sleep(0.3), "made")[1])
            seen.append(made)
            yield Sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        task = asyncio.ensure_future(aio.drive(steps()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["made", "cancelled"]


def test_chunks_stream_and_closing_early_runs_the_steps_finally() -> None:
    def steps(closed: list[bool]) -> Steps[None]:
        try:
            for i in range(5):
                yield Chunk(b"%d" % i)
                yield Sleep(0)
        finally:
            closed.append(True)

    closed: list[bool] = []
    assert list(lifecycle.drive_chunks(steps(closed))) == [b"0", b"1", b"2", b"3", b"4"]
    it = lifecycle.drive_chunks(steps(closed))
    assert next(it) == b"0"
    it.close()

    async def main() -> list[bytes]:
        got = [c async for c in aio.drive_chunks(steps(closed))]
        agen = aio.drive_chunks(steps(closed))
        got.append(await agen.__anext__())
        await agen.aclose()
        return got

    assert asyncio.run(main()) == [b"0", b"1", b"2", b"3", b"4", b"0"]
    assert closed == [True] * 4


def test_poll_checks_its_timeout_and_raises_what_the_end_says() -> None:
    args = ["x"]
    never = lifecycle.at_once(lambda: False)
    with pytest.raises(TypeError, match="timeout"):
        lifecycle.drive(lifecycle.poll("w", None, never, lambda: True, RuntimeError, args))
    with pytest.raises(ValueError, match="timeout"):
        lifecycle.drive(lifecycle.poll("w", -1, never, lambda: True, RuntimeError, args))
    with pytest.raises(RuntimeError, match="waited"):
        lifecycle.drive(lifecycle.poll("waited", 5, never, lambda: False, RuntimeError, args))
    from pyrt import TimeoutExpired

    with pytest.raises(TimeoutExpired):
        asyncio.run(aio.drive(lifecycle.poll("w", 0.02, never, lambda: True, RuntimeError, args)))
    calls = iter([False, False, "yes"])
    got = lifecycle.drive(
        lifecycle.poll(
            "w", 5, lifecycle.off_loop(lambda: next(calls)), lambda: True, RuntimeError, args
        )
    )
    assert got == "yes"
