"""pyrt's pytest plugin, installed with the package (a ``pytest11`` entry point).

Fixtures:

- ``pyrt_image``: the image named by ``--pyrt-image`` ("host", a path, or a stored name;
  default: the host image).
- ``pyrt_container``: a factory, ``pyrt_container(image, command, **options)``, returning a
  started container; everything it made is removed when the test ends, pass or fail.
- ``sandbox``: a started container of ``pyrt_image`` that idles until the test ends, fresh for
  each test (``--pyrt-sandbox-scope=module`` or ``session`` shares one); work in it with
  ``sandbox.exec(...)``. ``@pytest.mark.pyrt(image=..., **options)`` changes its image and
  options for one test. It comes from a warm pool of ``--pyrt-pool N`` containers per image and
  options (default 2; 0 starts one per test instead), reset after each test, never reused
  dirty; each pytest-xdist worker has pools of its own.
- ``pyrt_pool``: a factory, ``pyrt_pool(image, command, size=2, **options)``, returning a
  ``pyrt.Pool`` that lasts the session (the same arguments give the same pool), closed at its
  end: ``with pyrt_pool(img, ["sleep", "3600"]).acquire() as c: ...``.

When a test fails, the logs of the containers it started are attached to its report. On a
machine that cannot run containers at all, tests that use these fixtures are skipped with the
reason (the missing kernel feature), not failed.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional

import pytest

from pyrt.errors import PyrtError, SpawnError

if TYPE_CHECKING:
    from pyrt.container.container import Container
    from pyrt.container.pool import Pool
    from pyrt.image import Image
    from pyrt.network.shared import Network

# pytest loads this plugin into every session where pyrt is installed, so it imports the rest
# of pyrt only when a fixture of its is used: a session that uses none pays ~1 ms, not ~90.
_CONTAINERS = pytest.StashKey[list["Container"]]()
_PROBE: dict[str, Optional[str]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pyrt", "pyrt containers")
    g.addoption(
        "--pyrt-image",
        default="host",
        help='image for pyrt_image and sandbox: "host", a path, or a stored name',
    )
    g.addoption(
        "--pyrt-sandbox-scope",
        default="function",
        choices=["function", "class", "module", "package", "session"],
        help="share the sandbox fixture's container at this scope (default: fresh per test)",
    )
    g.addoption(
        "--pyrt-pool",
        type=_pool_size,
        default=2,
        metavar="N",
        help="serve the sandbox fixture from a warm pool of N containers (0: start one per test)",
    )


def _pool_size(text: str) -> int:
    """--pyrt-pool's value, checked when the command line is read (a usage error then, not an
    error in every test that asks for a sandbox)."""
    import argparse

    from pyrt.container.pool import MAX_SIZE

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= n <= MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{n}: must be between 0 and {MAX_SIZE}")
    return n


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pyrt(image=None, **options): image and Container options for `sandbox`"
    )
    _leave_pyrt_unrewritten(config)


def _leave_pyrt_unrewritten(config: pytest.Config) -> None:
    """pytest rewrites the asserts of every module of a plugin's distribution, for the better
    messages of a failing assert in a fixture; for pyrt, that is the whole runtime, imported at
    the first test that uses a fixture. Its asserts are internal invariants, not a test's, and
    each of its ~60 modules then went through pytest's import hook and a second bytecode cache:
    30-40 ms more of the first test's setup here (~0.2 ms a test of a 200-test suite). This
    plugin module, already loaded, keeps its rewriting. (The hook's set of marked names is not
    public API: without it, nothing changes.)"""
    hook = getattr(config.pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    cache = getattr(hook, "_marked_for_rewrite_cache", None)
    if isinstance(marked, set) and "pyrt" in marked:
        marked.discard("pyrt")
        if isinstance(cache, dict):
            cache.clear()


def _cannot_run() -> Optional[str]:
    """Why this machine cannot run containers at all (None if it can); probed once."""
    if "reason" not in _PROBE:
        from pyrt.container.container import Container
        from pyrt.image import Image

        try:
            Container(Image.host(), ["true"]).run(timeout=30)
            _PROBE["reason"] = None
        except SpawnError as e:
            what = {
                "namespaces": "the kernel refused to create namespaces",
                "mount": "mounting inside a new mount namespace failed",
                "rootfs": "mounting the container's root failed",
            }.get(e.stage, f"container setup failed at stage {e.stage!r}")
            _PROBE["reason"] = f"pyrt cannot run containers here: {what}: {e}"
        except PyrtError as e:
            _PROBE["reason"] = f"pyrt cannot run containers here: {e}"
    return _PROBE["reason"]


def _require_containers() -> None:
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)


def _resolve(ref: str) -> Image:
    from pyrt.cli import resolve_image

    return resolve_image(ref)


@pytest.fixture(scope="session")
def pyrt_image(pytestconfig: pytest.Config) -> Image:
    """The image named by --pyrt-image (default: the host's filesystem, read-only)."""
    _require_containers()
    return _resolve(str(pytestconfig.getoption("--pyrt-image")))


def _track(request: pytest.FixtureRequest, c: Container) -> None:
    node = request.node
    node.stash.setdefault(_CONTAINERS, []).append(c)


@pytest.fixture
def pyrt_container(request: pytest.FixtureRequest) -> Iterator[Callable[..., Container]]:
    """A factory: ``pyrt_container(image, command, **options)`` -> a started Container, removed
    when the test ends."""
    _require_containers()
    from pyrt.container.container import Container

    made: list[Container] = []

    def make(image: Image, command: Optional[Sequence[str]] = None, **options: Any) -> Container:
        c = Container(image, command, **options)
        made.append(c)
        _track(request, c)
        return c.start()

    try:
        yield make
    finally:
        for c in reversed(made):
            with contextlib.suppress(Exception):
                c.remove()


@pytest.fixture
def pyrt_network() -> Iterator[Network]:
    """A ``pyrt.Network`` for the test: containers join it with ``network=pyrt_network`` and
    reach each other by name and alias; it and its members are removed when the test ends."""
    _require_containers()
    from pyrt.network.shared import Network

    net = Network()
    try:
        yield net
    finally:
        net.remove(force=True)


def _sandbox_scope(fixture_name: str, config: pytest.Config) -> str:
    return str(config.getoption("--pyrt-sandbox-scope"))


class _Pools:
    """The session's pools, one per image, command and options (a repr is their key: options
    hold lists and mounts, which do not hash)."""

    def __init__(self) -> None:
        self._pools: dict[str, Pool] = {}

    def get(
        self, image: Image, command: Optional[Sequence[str]], size: int, **options: Any
    ) -> Pool:
        key = repr((image.lower, image.kind, command, size, sorted(options.items())))
        if key not in self._pools:
            from pyrt.container.pool import Pool

            self._pools[key] = Pool(image, command, size, **options)
        return self._pools[key]

    def close(self) -> None:
        for p in self._pools.values():
            with contextlib.suppress(Exception):
                p.close()
        self._pools.clear()


@pytest.fixture(scope="session")
def _pyrt_pools() -> Iterator[_Pools]:
    pools = _Pools()
    try:
        yield pools
    finally:
        pools.close()


@pytest.fixture(scope="session")
def pyrt_pool(_pyrt_pools: _Pools) -> Callable[..., Pool]:
    """A factory: ``pyrt_pool(image, command, size=2, **options)`` -> a ``pyrt.Pool`` for the
    session (the same arguments, the same pool), closed when the session ends."""
    _require_containers()

    def make(image: Image, command: Optional[Sequence[str]] = None, size: int = 2,
             **options: Any) -> Pool:  # fmt: skip
        return _pyrt_pools.get(image, command, size, **options)

    return make


@pytest.fixture(scope=_sandbox_scope)  # type: ignore[arg-type]
def sandbox(
    request: pytest.FixtureRequest, pyrt_image: Image, _pyrt_pools: _Pools
) -> Iterator[Container]:
    """A started container of ``pyrt_image`` that idles until the test (or the scope) ends."""
    from pyrt.config.idle import IDLE
    from pyrt.container.container import Container
    from pyrt.image import Image

    marker = request.node.get_closest_marker("pyrt")
    image, options = pyrt_image, {}
    if marker is not None:
        options = dict(marker.kwargs)
        ref = options.pop("image", None)
        if ref is not None:
            image = ref if isinstance(ref, Image) else _resolve(str(ref))
    options.setdefault("init", True)
    size = request.config.getoption("--pyrt-pool")
    if not isinstance(size, int) or size < 0:
        raise pytest.UsageError(f"--pyrt-pool must be 0 or more, not {size!r}")
    if size == 0 or options.get("name") is not None:
        # A name is one container's: it cannot come from a pool.
        c = Container(image, IDLE, **options)
        _track(request, c)
        c.start()
        try:
            yield c
        finally:
            c.remove()
        return
    with _pyrt_pools.get(image, IDLE, size, **options).acquire() as c:
        _track(request, c)
        yield c


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for c in item.stash.get(_CONTAINERS, []):
        with contextlib.suppress(Exception):
            logs = c.logs()
            title = f"pyrt logs: {c.name or c.id[:12]} {' '.join(c.args)[:60]}"
            report.sections.append((title, logs.decode("utf-8", "replace") or "(no output)"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A worker of pytest-xdist, or an interrupted run: whatever is still alive goes now. A
    # session that never imported the container module has none.
    made = sys.modules.get("pyrt.container.container")
    if made is not None:
        made.remove_all()
