"""Resource limits and stats through real cgroups (v1 on this machine; v2 on its unified tree as
far as that tree offers)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import pyrt

V2_MOUNT = "/sys/fs/cgroup/unified"


def host_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def test_memory_hog_is_oom_killed_and_reported(image: pyrt.Image) -> None:
    # tail -c keeps the last N bytes in memory: 200 MB of them against a 32 MB limit.
    r = pyrt.run(image, ["tail", "-c", "200000000", "/dev/zero"], memory="32m", timeout=60)
    assert r.returncode == -9
    assert r.oom_killed is True


def test_within_the_limit_nothing_is_killed(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["sh", "-c", "head -c 8000000 /dev/zero | wc -c"], memory="64m")
    assert r.returncode == 0 and r.oom_killed is False and r.stdout == b"8000000\n"


def test_swap_is_capped_too(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "30"], memory="32m") as c:
        mem = next(p for p in c._proc.cgroup_paths() if "/memory/" in p)  # type: ignore[union-attr]
        assert Path(mem, "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
        memsw = Path(mem, "memory.memsw.limit_in_bytes")
        if memsw.exists():  # only with swap accounting compiled in and enabled
            assert memsw.read_text().strip() == str(32 << 20)


def test_fork_bomb_is_contained(image: pyrt.Image) -> None:
    before = len(host_pids())
    # The inner shell forks until fork fails (and then gives up); pid 1 stays, exec'ing a sleep.
    bomb = "sh -c 'while :; do sleep 60 & done' 2>/dev/null; exec sleep 60"
    with pyrt.Container(image, ["sh", "-c", bomb], pids_limit=20) as c:
        deadline = time.monotonic() + 10
        while c.stats().pids < 19 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        # It failed inside the container, at its limit, and the container lives on.
        assert 19 <= c.stats().pids <= 20 and c.status == "running"
        assert len(host_pids()) <= before + 22
    deadline = time.monotonic() + 5
    while len(host_pids()) > before + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(host_pids()) <= before + 2  # the host's count is back at its baseline


def test_pids_limit_seen_inside_stats(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", "sleep 30 & sleep 30 & sleep 30"], pids_limit=10) as c:
        deadline = time.monotonic() + 5
        while c.stats().pids < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.stats().pids == 3


def test_cpu_hog_gets_about_half_a_core(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", "while :; do :; done"], cpus=0.5) as c:
        t0, cpu0 = time.monotonic(), c.stats().cpu_ns
        time.sleep(2.0)
        used = (c.stats().cpu_ns - cpu0) / 1e9 / (time.monotonic() - t0)
    assert 0.3 < used < 0.7, f"{used:.2f} of a core under cpus=0.5"


def test_stats_move_when_the_container_works(image: pyrt.Image) -> None:
    script = "sleep 0.3; head -c 40000000 /dev/zero > /dev/shm/f; sleep 30"
    with pyrt.Container(image, ["sh", "-c", script]) as c:
        first = c.stats()
        deadline = time.monotonic() + 10
        # Until the whole 40 MB file is in /dev/shm (shmem counts against the cgroup).
        while c.stats().memory_bytes < 40_000_000:
            assert time.monotonic() < deadline, "memory did not grow"
            time.sleep(0.05)
        later = c.stats()
    assert later.cpu_ns > first.cpu_ns
    assert later.memory_bytes > first.memory_bytes + 30_000_000


def test_remove_kills_everything_and_removes_the_cgroups(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "sleep 60 & sleep 60 & sleep 60"], memory="64m")
    c.start()
    paths = c._proc.cgroup_paths()  # type: ignore[union-attr]
    assert paths and all(os.path.isdir(p) for p in paths)
    c.remove()
    assert not any(os.path.exists(p) for p in paths)


@pytest.mark.parametrize(
    "opts,word",
    [
        ({"memory": "1m"}, "memory"),
        ({"memory": "lots"}, "memory"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"cpus": 0}, "cpus"),
        ({"cpus": 10_000}, "cpus"),
    ],
)
def test_impossible_limits_are_refused_by_name(
    image: pyrt.Image, opts: dict[str, object], word: str
) -> None:
    with pytest.raises((pyrt.PyrtError, ValueError), match=word):
        pyrt.Container(image, ["true"], **opts)  # type: ignore[arg-type]


def test_spec_limits_refused_by_the_core_name_the_field(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["true"])
    from pyrt import _core
    from pyrt.oci import spec

    doc = spec.build(
        spec.ContainerSpec(
            root=spec.RootSpec("/r"),
            process=spec.ProcessSpec(["x"]),
            cgroups_path="x",
            resources=spec.Limits(memory=1000),
        )
    )
    with pytest.raises(pyrt.SpawnError, match=r"memory\.limit.*6 MiB"):
        _core.plan(json.dumps(doc))
    del c


V2_PROBE = """
import json, os, sys, time, pyrt
img = pyrt.Image.load(sys.argv[1])
out = {}
with pyrt.Container(img, ["sh", "-c", "sleep 60 & sleep 60"]) as c:
    paths = c._proc.cgroup_paths()
    out["paths"] = paths
    time.sleep(0.2)
    out["proc_cgroup"] = open(f"/proc/{c.pid}/cgroup").read()
    out["events"] = open(os.path.join(paths[0], "cgroup.events")).read()
    out["procs"] = open(os.path.join(paths[0], "cgroup.procs")).read().split()
    out["inside"] = pyrt.run.__module__
out["gone"] = not os.path.exists(paths[0])
try:
    pyrt.run(img, ["true"], memory="64m")
    out["limit_error"] = None
except pyrt.SpawnError as e:
    out["limit_error"] = [e.stage, str(e)]
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not os.path.exists(os.path.join(V2_MOUNT, "cgroup.procs")),
    reason="needs a cgroup2 hierarchy at /sys/fs/cgroup/unified (hybrid layout)",
)
def test_v2_on_the_unified_hierarchy(rootfs: Path) -> None:
    # A fresh process told to use the v2 tree: creation, placement, cgroup.events, cgroup.kill
    # and removal for real; this tree has no memory controller, so a memory limit is refused.
    env = dict(os.environ, PYRT_CGROUP_V2_MOUNT=V2_MOUNT)
    r = subprocess.run(
        [sys.executable, "-c", V2_PROBE, str(rootfs)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (path,) = out["paths"]
    assert path.startswith(V2_MOUNT + "/") and os.path.basename(path).startswith("pyrt-")
    rel = path[len(V2_MOUNT) :]
    assert f"0::{rel}\n" in out["proc_cgroup"]
    assert "populated 1" in out["events"]
    assert len(out["procs"]) == 2  # the shell (exec'd into its last sleep) and the other sleep
    assert out["gone"] is True
    stage, msg = out["limit_error"]
    assert stage == "cgroup" and "memory" in msg and V2_MOUNT in msg


CRASH = """
import sys, pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sleep", "1000"], memory="64m").start()
print(c.id, *c._proc.cgroup_paths(), flush=True)
sys.stdin.read()
"""


def test_cgroups_of_a_crashed_parent_are_collected(rootfs: Path) -> None:
    from pyrt.host.collect import collect_stale

    p = subprocess.Popen(
        [sys.executable, "-c", CRASH, str(rootfs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        cid, *paths = p.stdout.readline().split()
        assert paths and all(os.path.isdir(x) for x in paths)
    finally:
        p.kill()
        p.wait()
    assert cid in collect_stale()
    assert not any(os.path.exists(x) for x in paths)


def test_a_detached_containers_cgroups_are_noted_in_its_state(image: pyrt.Image) -> None:
    """A started container's cgroups are noted in its state.json (no separate listing: one
    file fewer at each start), and the stale collection reads them from there."""
    from pyrt.host.collect import remove_cgroups

    c = pyrt.Container(image, ["sleep", "60"]).start()
    try:
        assert c._dir is not None and c._proc is not None
        paths = c._proc.cgroup_paths()
        assert paths and not (c._dir.path / "cgroups").exists()
        noted = json.loads(c._dir.state_file.read_text())["cgroups"]
        assert noted == paths
    finally:
        c.remove()
    # The collection, from a state.json alone: a cgroup made for it, then damaged states.
    memory = next((p for p in paths if "/memory/" in p), paths[0])
    made = os.path.join(os.path.dirname(memory), "pyrt-collect-from-state")
    os.mkdir(made)
    try:
        with tempfile.TemporaryDirectory() as d:
            state = os.path.join(d, "state.json")
            for damaged in ("{", '{"cgroups": 3}', '{"cgroups": [null, 4]}', "[]"):
                Path(state).write_text(damaged)
                remove_cgroups(os.path.join(d, "cgroups"), state)
            assert os.path.isdir(made)
            Path(state).write_text(json.dumps({"cgroups": [made]}))
            remove_cgroups(os.path.join(d, "cgroups"), state)
            assert not os.path.exists(made)
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(made)
