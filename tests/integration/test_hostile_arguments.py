"""Hostile values at pyrt's doors: wrong types, NaN, infinities, huge and negative numbers, NUL
bytes, lone surrogates (not UTF-8), nested junk, path objects. Each call either works or raises
one of the allowed types (TypeError, ValueError, a PyrtError), never anything else (an
OverflowError from the core's integer conversion, an AttributeError from deep inside, a
panic), never hangs, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyrt
from helpers import state_entries

ALLOWED = (TypeError, ValueError, pyrt.PyrtError)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(10**400),  # past what a float holds
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=st.sampled_from(["\0", "\udc80", "/", ".", "a", ":"]), max_size=6),
    st.binary(max_size=6),
    st.builds(Path, st.sampled_from(["/tmp", "rel", "/a/../b"])),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.builds(object),
)

OPTIONS = [
    "env", "workdir", "user", "hostname", "name", "mounts", "readonly_rootfs", "network",
    "ports", "memory", "pids_limit", "cpus", "cap_add", "cap_drop", "privileged", "init",
    "rootless", "entrypoint", "disk", "aliases", "healthcheck",
]  # fmt: skip


class Hang(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[None]:
    """A per-call hang detector: any call that blocks for 10 s fails the test."""

    def ring(*_: object) -> None:
        raise Hang("a call hung")

    old = signal.signal(signal.SIGALRM, ring)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _call(fn: Any, *args: Any, **kwargs: Any) -> None:
    signal.alarm(10)
    try:
        fn(*args, **kwargs)
    except ALLOWED:
        pass
    finally:
        signal.alarm(0)


FAST = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FAST
@given(option=st.sampled_from(OPTIONS), value=junk)
def test_container_options(image: pyrt.Image, alarm: None, option: str, value: object) -> None:
    before = state_entries()
    c = None
    signal.alarm(10)
    try:
        c = pyrt.Container(image, ["true"], **{option: value})
    except ALLOWED:
        pass
    finally:
        signal.alarm(0)
    if c is not None:
        _call(c.run)
        c.remove()
    assert state_entries() == before


@FAST
@given(
    timeout=junk,
    input=junk,
    command=st.one_of(junk, st.lists(junk, min_size=1, max_size=2)),
)
def test_run_arguments(
    image: pyrt.Image, alarm: None, timeout: Any, input: Any, command: Any
) -> None:
    before = state_entries()
    _call(pyrt.run, image, command, input=input, timeout=timeout)
    _call(pyrt.run, image, ["true"], timeout=timeout)
    assert state_entries() == before


@pytest.fixture(scope="module")
def running(image: pyrt.Image) -> Iterator[pyrt.Container]:
    with pyrt.Container(image, ["sleep", "600"]) as c:
        yield c


@FAST
@given(a=junk, b=junk)
def test_methods_of_a_running_container(
    running: pyrt.Container, alarm: None, a: Any, b: Any
) -> None:
    c = running
    _call(c.exec, ["true"], timeout=a)
    _call(c.exec, a)
    _call(c.exec, ["true"], env=a, user=b)
    _call(c.exec, ["true"], workdir=a)
    _call(c.wait, 0.001)
    if not isinstance(a, int):  # a number is a real signal: tested apart
        _call(c.kill, a)
    _call(c.write_file, a, b)
    _call(c.write_file, "/tmp/f", b"x", mode=a)
    _call(c.read_file, a)
    _call(c.put_archive, a, b)
    _call(c.get_archive, a)
    # A real host directory as the source ("/", /tmp) is a legitimate request to copy all of it
    # in, not a hostile value: only sources that do not exist are thrown here.
    if not (isinstance(a, (str, Path)) and os.path.lexists(a)):
        _call(c.copy_in, a, b)
    _call(c.wait_for_port, a, timeout=0.01)
    _call(c.port, a)
    _call(c.wait_for_http, a, timeout=0.01)
    _call(c.wait_for_http, 80, a, timeout=0.01)
    _call(c.wait_for_http, 80, "/", a, timeout=0.01)
    _call(c.wait_for_http, 80, timeout=a if not isinstance(a, (int, float)) else 0.01)
    # update: a valid value is a real limit (a pids limit of 1 would leave no room for an
    # exec), so the container gets generous ones back after.
    _call(c.update, memory=a)
    _call(c.update, pids_limit=a)
    _call(c.update, cpus=b)
    c.update(memory="1g", pids_limit=4096, cpus=float(os.cpu_count() or 1))
    # A long wait for a file that never comes is legitimate, not a hang: only bad timeouts.
    if not (isinstance(a, (int, float)) and not isinstance(a, bool) and a >= 0):
        _call(c.wait_for_file, "/nope", timeout=a)
    assert c.status == "running", "no hostile call may take the container down"
    assert c.exec(["true"]).returncode == 0, "no hostile call may break the container's root"


@FAST
@given(a=junk, b=junk)
def test_image_arguments(rootfs: Path, alarm: None, a: Any, b: Any) -> None:
    _call(pyrt.Image.get, a)
    if not (isinstance(a, (str, Path)) and os.path.lexists(a)):  # (a real path is a real load)
        _call(pyrt.Image.load, a)
    _call(pyrt.Image.load, rootfs, ref=a)
    _call(pyrt.Image.load, rootfs, progress=b)
    # A pull that gets as far as the network goes to a port where nothing listens.
    _call(pyrt.Image.pull, a)
    _call(pyrt.Image.pull, "127.0.0.1:1/a:1", insecure=a, username=b, progress=a)


def test_pull_and_push_flags_are_booleans(image: pyrt.Image) -> None:
    """A truthy string is not taken for True: "no" would have meant plain HTTP."""
    for bad in ("no", 1, b"x"):
        with pytest.raises(TypeError, match="insecure"):
            pyrt.Image.pull("127.0.0.1:1/a:1", insecure=bad)
        with pytest.raises(TypeError, match="progress"):
            pyrt.Image.pull("127.0.0.1:1/a:1", progress=bad)
        with pytest.raises(TypeError, match="progress"):
            image.push("127.0.0.1:1/a:1", progress=bad)
        with pytest.raises(TypeError, match="progress"):
            pyrt.Image.load(image.lower[0], progress=bad)


def test_numbers_past_a_float_are_refused_by_name(image: pyrt.Image, tmp_path: Path) -> None:
    """Not an OverflowError from a float() inside."""
    for size in ("9" * 400, "9" * 400 + "m"):
        with pytest.raises(pyrt.PyrtError, match="memory"):
            pyrt.Container(image, ["true"], memory=size)
    for field in ("interval", "timeout", "start_period"):
        with pytest.raises(ValueError, match=field):
            pyrt.Healthcheck(["CMD", "true"], **{field: 10**400})
    (tmp_path / "Containerfile").write_text(
        f"FROM scratch\nHEALTHCHECK --interval={'9' * 400}s CMD true\n"
    )
    with pytest.raises(pyrt.BuildError, match="--interval"):
        pyrt.build(tmp_path)


@FAST
@given(a=junk, b=junk)
def test_healthcheck_and_network_arguments(alarm: None, a: Any, b: Any) -> None:
    from pyrt.host.places import state_root

    _call(pyrt.Healthcheck, a)
    _call(pyrt.Healthcheck, ["CMD", "true"], interval=a, timeout=b)
    _call(pyrt.Healthcheck, ["CMD", "true"], retries=a, start_period=b)
    nets = state_root() / "networks"
    before = sorted(os.listdir(nets)) if nets.is_dir() else []
    signal.alarm(10)
    try:
        net = pyrt.Network(name=a)
    except ALLOWED:
        pass
    else:
        net.remove()
    finally:
        signal.alarm(0)
    _call(pyrt.Network.open, a)
    assert (sorted(os.listdir(nets)) if nets.is_dir() else []) == before


@FAST
@given(option=st.sampled_from(["file", "tag", "build_args", "target", "pull"]), value=junk,
       ref=junk, insecure=junk)  # fmt: skip
def test_build_and_push_arguments(
    image: pyrt.Image, rootfs: Path, tmp_path_factory: pytest.TempPathFactory, alarm: None,
    option: str, value: object, ref: object, insecure: object,
) -> None:  # fmt: skip
    ctx = tmp_path_factory.mktemp("ctx")
    (ctx / "Containerfile").write_text(f"FROM {rootfs}\nARG A\nRUN true\n")
    # In a directory of the test's own: a relative path given as a context or as the
    # destination of a push (a local OCI layout, "rel", "a:b") is made there, not in the
    # directory pytest was started from (the repository's, where two such layouts were once
    # committed).
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        _call(pyrt.build, value)
        _call(pyrt.build, ctx, **{option: value})
        # A push that gets as far as the network goes to a port where nothing listens.
        _call(image.push, f"127.0.0.1:1/{ref}" if isinstance(ref, str) else ref)
        _call(image.push, "127.0.0.1:1/a:1", insecure=insecure, username=ref, password=value)
    finally:
        os.chdir(here)


def test_huge_timeouts_are_no_limit(running: pyrt.Container) -> None:
    for t in (1e300, math.inf, 2**64, 2**1000):
        assert running.exec(["true"], timeout=t).returncode == 0
        assert pyrt.run(pyrt.Image.host(), ["true"], timeout=t).returncode == 0


def test_an_error_after_an_exec_started_does_not_hang_remove(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sleep", "600"]).start()
    with pytest.raises(ValueError):
        c.exec(["true"], timeout=-1)
    with pytest.raises(TypeError):
        c.exec(["true"], stdout=object())  # type: ignore[arg-type]
    signal.alarm(20)
    try:
        c.remove()
    finally:
        signal.alarm(0)
    assert c.status == "removed"


def test_output_to_a_file_not_to_memory(image: pyrt.Image, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with open(out, "wb") as f:
        r = pyrt.run(image, ["sh", "-c", "head -c 50000000 /dev/zero; echo err >&2"], stdout=f)
    assert r.stdout is None and r.stderr == b"err\n"
    assert os.path.getsize(out) == 50_000_000
    r = pyrt.run(image, ["sh", "-c", "echo a; echo b >&2"], stdout=pyrt.DEVNULL,
                 stderr=pyrt.STDOUT)  # fmt: skip
    assert r.stdout is None and r.stderr is None
    r = pyrt.run(image, ["sh", "-c", "echo a; echo b >&2"], stderr=pyrt.STDOUT)
    assert r.stdout == b"a\nb\n"
    assert "a\\nb\\n" in repr(r), "the repr shows the output"


def _acall(coro_fn: Any, *args: Any, **kwargs: Any) -> None:
    """``_call`` for pyrt.aio: the coroutine is made and run to its end under the same hang
    detector (asyncio.run blocks the test thread, where SIGALRM lands)."""
    import asyncio

    async def go() -> None:
        await coro_fn(*args, **kwargs)

    _call(asyncio.run, go())


@FAST
@given(option=st.sampled_from(OPTIONS), value=junk, timeout=junk)
def test_aio_run_and_options(
    image: pyrt.Image, alarm: None, option: str, value: object, timeout: Any
) -> None:
    from pyrt import aio

    before = state_entries()
    _acall(aio.run, image, ["true"], **{option: value})
    _acall(aio.run, image, ["true"], timeout=timeout, input=value)
    assert state_entries() == before


@FAST
@given(a=junk, b=junk)
def test_aio_methods_of_a_running_container(image: pyrt.Image, alarm: None, a: Any, b: Any) -> None:
    import asyncio

    from pyrt import aio

    before = state_entries()

    async def scenario() -> None:
        async with aio.Container(image, ["sleep", "600"]) as c:
            for call in (
                lambda: c.exec(["true"], timeout=a),
                lambda: c.exec(a),
                lambda: c.exec(["true"], env=a, user=b),
                lambda: c.write_file(a, b),
                lambda: c.read_file(a),
                lambda: c.put_archive(a, b),
                lambda: c.get_archive(a),
                lambda: c.wait_for_port(a, timeout=0.01),
            ):
                with contextlib.suppress(ALLOWED):
                    await call()
            assert (await c.exec(["true"])).returncode == 0, "still usable"

    signal.alarm(20)
    try:
        asyncio.run(scenario())
    finally:
        signal.alarm(0)
    assert state_entries() == before


@FAST
@given(size=junk, option=st.sampled_from(OPTIONS), value=junk, timeout=junk)
def test_pool_arguments(
    image: pyrt.Image, alarm: None, size: Any, option: str, value: object, timeout: Any
) -> None:
    before = state_entries()
    for kwargs in ({"size": size}, {"size": 1, option: value}):
        pool = None
        signal.alarm(10)
        try:
            pool = pyrt.Pool(image, ["sleep", "60"], **kwargs)
        except ALLOWED:
            pass
        finally:
            signal.alarm(0)
        if pool is not None:
            with pool:
                _call(pool.take, timeout)
                _call(pool.give_back, value)
    assert state_entries() == before
