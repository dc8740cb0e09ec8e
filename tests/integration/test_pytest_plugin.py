"""The pytest plugin, driven through pytester in a separate pytest process, as a user's suite
would load it (the pytest11 entry point). After each run nothing of pyrt's may remain."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import snapshot

pytestmark = pytest.mark.usefixtures("nothing_left_behind")


@pytest.fixture
def nothing_left_behind() -> Iterator[None]:
    before = snapshot()
    yield
    after = snapshot()
    import time

    deadline = time.monotonic() + 5
    while set(after["processes"]) - set(before["processes"]) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.05)
        after = snapshot()
    for k in ("mounts", "cgroups", "state"):
        assert [x for x in after[k] if x not in before[k]] == [], k  # type: ignore[union-attr]
    assert set(after["processes"]) - set(before["processes"]) == set()  # type: ignore[arg-type]


def test_pass_fail_and_logs_on_failure(pytester: pytest.Pytester, rootfs: Path) -> None:
    pytester.makepyfile(
        f"""
        import pyrt

        def test_passes(sandbox):
            assert sandbox.exec(["echo", "hi"]).stdout == b"hi\\n"
            assert sandbox.exec(["sh", "-c", "echo $$"]).returncode == 0

        def test_fails(pyrt_container):
            img = pyrt.Image.load({str(rootfs)!r})
            c = pyrt_container(img, ["sh", "-c", "echo server-said-this; sleep 60"])
            c.wait_for_log("server-said-this")
            assert False, "the test failed"
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, failed=1)
    out = r.stdout.str()
    assert "pyrt logs:" in out and "server-said-this" in out


def test_pyrt_runs_unrewritten_and_the_users_asserts_are_rewritten(
    pytester: pytest.Pytester,
) -> None:
    """pytest rewrites the asserts of a plugin's whole distribution; pyrt opts its runtime out
    (30-40 ms of the first test's setup), and the user's own asserts keep their messages."""
    pytester.makepyfile(
        """
        import sys

        def test_loaders(sandbox):
            assert sandbox.exec(["true"]).returncode == 0
            for name in ("pyrt.container.container", "pyrt.container.pool", "pyrt.oci.spec"):
                loader = type(sys.modules[name].__loader__).__name__
                print("LOADER", name, loader)

        def test_message():
            got = [1, 2]
            assert got == [1, 3]
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    r.assert_outcomes(passed=1, failed=1)
    out = r.stdout.str()
    loaders = re.findall(r"LOADER \S+ (\w+)", out)
    assert loaders == ["SourceFileLoader"] * 3, out
    assert "At index 1 diff: 2 != 3" in out  # (the rewritten assert's explanation)


def test_sandbox_is_fresh_per_test_and_uses_the_image_option(
    pytester: pytest.Pytester, rootfs: Path
) -> None:
    pytester.makepyfile(
        """
        def test_one(sandbox):
            assert sandbox.exec(["cat", "/etc/marker"]).stdout == b"busybox-image\\n"
            sandbox.exec(["touch", "/tmp/left-over"])

        def test_two(sandbox):
            assert sandbox.exec(["test", "-e", "/tmp/left-over"]).returncode == 1

        def test_image(pyrt_image):
            assert pyrt_image.kind == "rootfs"
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--pyrt-image={rootfs}")
    r.assert_outcomes(passed=3)


def test_shared_scope_and_marker(pytester: pytest.Pytester, rootfs: Path) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_a(sandbox):
            sandbox.exec(["touch", "/tmp/shared"])

        def test_b(sandbox):
            assert sandbox.exec(["test", "-e", "/tmp/shared"]).returncode == 0
        """
    )
    r = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--pyrt-image={rootfs}", "--pyrt-sandbox-scope=module"
    )
    r.assert_outcomes(passed=2)
    pytester.makepyfile(
        test_marker=f"""
        import pytest

        @pytest.mark.pyrt(image={str(rootfs)!r}, env={{"MODE": "marked"}}, memory="64m")
        def test_marked(sandbox):
            assert sandbox.exec(["sh", "-c", "echo $MODE"]).stdout == b"marked\\n"
            assert sandbox.stats().memory_bytes > 0
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_marker.py")
    r.assert_outcomes(passed=1)


def test_error_in_fixture_setup(pytester: pytest.Pytester, rootfs: Path) -> None:
    pytester.makepyfile(
        f"""
        import pytest, pyrt

        @pytest.fixture
        def broken(pyrt_container):
            pyrt_container(pyrt.Image.load({str(rootfs)!r}), ["sleep", "60"])
            raise RuntimeError("setup failed after starting a container")

        def test_uses_it(broken):
            pass
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(errors=1)


def test_keyboard_interrupt(pytester: pytest.Pytester, rootfs: Path) -> None:
    pytester.makepyfile(
        f"""
        import pyrt

        def test_interrupted(pyrt_container, sandbox):
            pyrt_container(pyrt.Image.load({str(rootfs)!r}), ["sleep", "60"])
            raise KeyboardInterrupt

        def test_never_runs(sandbox):
            pass
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert r.ret == pytest.ExitCode.INTERRUPTED


def test_xdist_two_workers(pytester: pytest.Pytester, rootfs: Path) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("i", range(12))
        def test_many(sandbox, pyrt_container, pyrt_image, i):
            assert sandbox.exec(["sh", "-c", f"echo {i}"]).stdout == f"{i}\\n".encode()
            c = pyrt_container(pyrt_image, ["sleep", "60"], name=f"named-{i}")
            assert c.status == "running"
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", f"--pyrt-image={rootfs}")
    r.assert_outcomes(passed=12)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="pyrt-plugin-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d)


def _pytest_as_nobody(d: Path) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run as another user")
    return subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "pytest", "-p", "no:cacheprovider", "-rs", str(d)],
        capture_output=True, text=True, cwd=d, env=dict(os.environ, HOME=str(d)), timeout=120,
    )  # fmt: skip


def test_sandbox_works_for_an_unprivileged_user(public_dir: Path) -> None:
    """As nobody, the fixtures run rootless containers (a user namespace)."""
    (public_dir / "test_x.py").write_text(
        "def test_x(sandbox):\n"
        "    assert sandbox.exec(['id', '-u']).stdout == b'0\\n'\n"
        "    assert b'65534' in sandbox.exec(['cat', '/proc/self/uid_map']).stdout\n"
    )
    r = _pytest_as_nobody(public_dir)
    assert "1 passed" in r.stdout, r.stdout + r.stderr


def test_the_documented_examples_run(
    pytester: pytest.Pytester, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "pytest_fixtures"
    for f in examples.iterdir():
        if f.suffix == ".py":
            pytester.makefile(".py", **{f.stem: f.read_text()})
    monkeypatch.setenv("EXAMPLE_ROOTFS", str(rootfs))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--pyrt-image={rootfs}")
    r.assert_outcomes(passed=4)


def test_sandbox_from_a_warm_pool_and_the_pool_factory(
    pytester: pytest.Pytester, rootfs: Path
) -> None:
    """Every test sees a fresh container whatever the pool's size (0: none), and pyrt_pool
    gives one pool per arguments for the session."""
    ids = pytester.path / "ids"
    pytester.makepyfile(
        f"""
        import pytest, pyrt

        @pytest.mark.parametrize("i", range(6))
        def test_fresh(sandbox, i):
            assert sandbox.status == "running"
            assert sandbox.exec(["test", "-e", "/tmp/dirty"]).returncode == 1
            sandbox.exec(["touch", "/tmp/dirty"])
            with open({str(ids)!r}, "a") as f:
                f.write(sandbox.id + "\\n")

        @pytest.mark.parametrize("i", range(3))
        def test_factory(pyrt_pool, pyrt_image, i):
            pool = pyrt_pool(pyrt_image, ["sleep", "3600"], size=1)
            assert pool is pyrt_pool(pyrt_image, ["sleep", "3600"], size=1)
            with pool.acquire(timeout=30) as c:
                assert c.exec(["test", "-e", "/f"]).returncode == 1
                c.write_file("/f", "x")
        """
    )
    for size in ("1", "0", "3"):
        ids.write_text("")
        r = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", f"--pyrt-image={rootfs}", f"--pyrt-pool={size}"
        )
        r.assert_outcomes(passed=9)
        assert len(ids.read_text().split()) == 6
    # A bad size is a usage error when the command line is read (exit 4), before any test.
    for bad, why in (("-1", "between 0 and 1024"), ("5000", "between 0 and 1024"),
                     ("two", "not a whole number")):  # fmt: skip
        r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--pyrt-pool={bad}")
        assert r.ret == pytest.ExitCode.USAGE_ERROR
        assert "--pyrt-pool: " in r.stderr.str() and why in r.stderr.str()


def test_a_session_without_pyrt_fixtures_does_not_import_pyrt(pytester: pytest.Pytester) -> None:
    # The plugin is loaded into every session where pyrt is installed; one that uses none of
    # its fixtures must not pay for the core, the image code and the rest (~90 ms). The test
    # looks at what the session has imported by the time it runs.
    pytester.makepyfile(
        """
        import sys

        def test_nothing_of_pyrt():
            loaded = sorted(m for m in sys.modules if m.startswith("pyrt"))
            assert "pyrt.pytest_plugin" in loaded, loaded
            assert loaded == ["pyrt", "pyrt.errors", "pyrt.pytest_plugin"], loaded
        """
    )
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)


def test_every_public_name_resolves_on_first_use() -> None:
    # `import pyrt` defers its submodules (PEP 562); each name of __all__ must still be there,
    # in dir(), through `from pyrt import *`, and be the object its home module defines.
    code = """
import sys, pyrt
assert "pyrt._core" not in sys.modules, "import pyrt loaded the core"
names = {}
exec("from pyrt import *", names)
missing = [n for n in pyrt.__all__ if n not in names or n not in dir(pyrt)]
assert not missing, missing
from pyrt.container.container import Container, run
from pyrt.image import Image
assert pyrt.Container is Container and pyrt.run is run and pyrt.Image is Image
assert pyrt.aio.Container is not Container
try:
    pyrt.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("pyrt.no_such_name did not raise")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
