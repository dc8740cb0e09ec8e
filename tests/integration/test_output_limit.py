"""The bound on captured output (``output_limit``): a process that writes without end is
killed once a stream passes it, with a typed error and what was kept, instead of filling the
caller's memory; below it nothing changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, NOBODY, as_user, public_dir

import pyrt
from helpers import new_since, settles, snapshot
from pyrt.config.options import OUTPUT_LIMIT

MIB = 1 << 20


def yes_processes(c: pyrt.Container) -> list[str]:
    """The pids of `yes` in ``c``, as a process inside sees them."""
    r = c.exec(["sh", "-c", "grep -l '^yes' /proc/[0-9]*/cmdline 2>/dev/null; true"])
    return r.stdout.decode().split()


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_an_exec_writing_without_end_is_killed_at_the_limit(image: pyrt.Image, stream: str) -> None:
    redirect = "" if stream == "stdout" else " >&2"
    with pyrt.Container(image, ["sleep", "60"], output_limit="1m") as c:
        with pytest.raises(pyrt.OutputLimitExceeded) as e:
            c.exec(["sh", "-c", f"exec yes{redirect}"], timeout=60)
        assert e.value.stream == stream and e.value.limit == MIB
        kept = e.value.stdout if stream == "stdout" else e.value.stderr
        assert len(kept) == MIB and kept == b"y\n" * (MIB // 2)
        assert "output_limit" in str(e.value) and stream in str(e.value)
        # The writer is gone from inside; the container runs on, and serves the next exec.
        assert yes_processes(c) == []
        assert c.status == "running"
        assert c.exec(["echo", "still here"]).stdout == b"still here\n"


def test_output_of_exactly_the_limit_is_whole(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "60"], output_limit=1000) as c:
        r = c.exec(["head", "-c", "1000", "/dev/zero"])
        assert r.returncode == 0 and r.stdout == b"\0" * 1000
        with pytest.raises(pyrt.OutputLimitExceeded):
            c.exec(["head", "-c", "1001", "/dev/zero"])


def test_run_writing_without_end_is_killed_and_leaves_nothing(image: pyrt.Image) -> None:
    before = snapshot()
    with pytest.raises(pyrt.OutputLimitExceeded) as e:
        pyrt.run(image, ["yes"], output_limit=100_000, timeout=60)
    assert e.value.stream == "stdout" and len(e.value.stdout) == 100_000
    assert isinstance(e.value, pyrt.PyrtError)
    assert settles(lambda: not new_since(before)), new_since(before)


def test_no_limit_and_the_default(image: pyrt.Image) -> None:
    """None keeps everything (as subprocess does); unless told, a container keeps 1 GiB of a
    stream and no more (a run of `cat /dev/zero`: ~4 s, ~2 GiB of this process at the peak)."""
    n = 3 * MIB
    r = pyrt.run(image, ["head", "-c", str(n), "/dev/zero"], output_limit=None)
    assert len(r.stdout) == n
    assert len(pyrt.run(image, ["head", "-c", str(n), "/dev/zero"]).stdout) == n
    with pytest.raises(pyrt.OutputLimitExceeded) as e:
        pyrt.run(image, ["cat", "/dev/zero"], timeout=120)
    kept = (e.value.limit, len(e.value.stdout), e.value.stream)
    del e  # (a GiB)
    assert kept == (OUTPUT_LIMIT, 1 << 30, "stdout")


def test_the_async_front_stops_at_the_same_limit(image: pyrt.Image) -> None:
    async def main() -> tuple[pyrt.OutputLimitExceeded, bytes]:
        async with pyrt.aio.Container(image, ["sleep", "60"], output_limit="64k") as c:
            with pytest.raises(pyrt.OutputLimitExceeded) as e:
                await c.exec(["sh", "-c", "yes >&2"], timeout=60)
            after = await c.exec(["echo", "ok"])
            return e.value, after.stdout

    err, after = asyncio.run(main())
    assert err.stream == "stderr" and err.stderr == b"y\n" * (32 << 10)
    assert after == b"ok\n"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, TypeError),
        (float("nan"), TypeError),
        (Path("64m"), TypeError),
        (2**70, ValueError),
        (True, TypeError),
        ([1], TypeError),
        (0, ValueError),
        (-5, ValueError),
        ("lots", ValueError),
        ("0k", ValueError),
    ],
)
def test_a_bad_limit_is_refused_before_anything_starts(
    image: pyrt.Image, value: object, error: type[Exception]
) -> None:
    before = snapshot()
    with pytest.raises(error, match="output_limit"):
        pyrt.run(image, ["true"], output_limit=value)
    assert new_since(before) == {}


@NEEDS_SETPRIV
def test_a_rootless_exec_is_bounded_too(tmp_path: Path) -> None:
    public = public_dir()
    where = next(public)
    try:
        out = as_user(
            NOBODY,
            NOBODY,
            """
            img = pyrt.Image.load(PUBLIC / "rootfs")
            with pyrt.Container(img, ["sleep", "30"], output_limit=4096) as c:
                try:
                    c.exec(["yes"], timeout=60)
                except pyrt.OutputLimitExceeded as e:
                    out["kept"] = len(e.stdout)
                out["after"] = c.exec(["echo", "ok"]).stdout.decode()
            """,
            where,
            tmp_path,
        )
    finally:
        next(public, None)
    assert out["kept"] == 4096 and out["after"] == "ok\n"
    assert out["leftover"] == []
