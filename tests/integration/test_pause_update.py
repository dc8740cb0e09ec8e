"""pause(), resume() and update() on a running container: checked from inside (a counter that
stops and goes on, an allocation the new limit kills, forks the new pids limit refuses) and on
the host (the cgroup's files), with the errors a caller can make."""

from __future__ import annotations

import os
import time

import pytest

import pyrt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a cgroup to write)")

# Written by rename: a freeze never catches the file half-written.
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; usleep 5000; done"
)


def count(c: pyrt.Container) -> int:
    return int(c.read_file("/tmp/n") or b"0")


def wait_for_count(c: pyrt.Container) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if count(c) > 0:
                return
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError("the counter never started")


def test_pause_stops_every_process_and_resume_lets_them_go_on(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", COUNTER]) as c:
        wait_for_count(c)
        c.pause()
        assert c.status == "paused"
        frozen_at = count(c)
        time.sleep(0.3)
        assert count(c) == frozen_at, "a paused container went on counting"
        with pytest.raises(pyrt.PyrtError, match="paused"):
            c.exec(["true"])
        # Files and commit work on a paused container, and leave it paused.
        c.write_file("/tmp/note", "while paused")
        assert c.commit().config is not None
        assert c.status == "paused" and count(c) == frozen_at
        c.pause()  # idempotent
        c.resume()
        assert c.status == "running"
        deadline = time.monotonic() + 10
        while count(c) == frozen_at and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count(c) > frozen_at
        c.resume()  # idempotent
        assert c.exec(["cat", "/tmp/note"]).stdout == b"while paused"


def test_a_paused_container_is_killed_and_removed_cleanly(image: pyrt.Image) -> None:
    from helpers import assert_nothing_left_of

    c = pyrt.Container(image, ["sh", "-c", COUNTER]).start()
    wait_for_count(c)
    c.pause()
    t0 = time.monotonic()
    c.remove()
    assert time.monotonic() - t0 < 10
    assert c.status == "removed"
    assert_nothing_left_of(c.id)
    c2 = pyrt.Container(image, ["sleep", "60"]).start()
    c2.pause()
    c2.kill()
    assert c2.wait(timeout=10) == -9
    c2.remove()


@pytest.mark.parametrize("rootless", [False, True], ids=["plain", "userns"])
def test_update_changes_the_limits_seen_inside(image: pyrt.Image, rootless: bool) -> None:
    # In a user namespace, the execs after the first go through the exec server.
    with pyrt.Container(image, ["sleep", "600"], rootless=rootless) as c:
        c.update(pids_limit=20)
        r = c.exec(["sh", "-c", "for i in $(seq 40); do sleep 5 & done; echo started"])
        assert r.returncode != 0 or b"can't fork" in r.stderr or b"Resource" in r.stderr
        c.update(pids_limit=200)  # (needs no fork inside; the sleeps hold the 20)
        c.exec(["sh", "-c", "pkill sleep; true"], check=True)
        c.update(memory="32m")
        cgroups = c._proc.cgroup_paths() if c._proc else []
        mem = next(p for p in cgroups if "/memory/" in p)
        with open(os.path.join(mem, "memory.limit_in_bytes")) as f:
            assert int(f.read()) == 32 << 20
        # The hog offers itself to the OOM killer first: on a loaded machine the killer, once
        # its first victim is slow to die, may take the container's pid 1 next (seen in CI).
        hog = c.exec(
            [
                "sh",
                "-c",
                "echo 1000 > /proc/self/oom_score_adj; "
                "x=$(head -c 60000000 /dev/zero | tr '\\0' a); echo ${#x}",
            ]
        )
        assert hog.returncode != 0 and c.oom_killed
        c.update(memory="128m")  # raising it again (memory+swap first, on v1)
        with open(os.path.join(mem, "memory.limit_in_bytes")) as f:
            assert int(f.read()) == 128 << 20
        # cpus= on a container made without a cpu cgroup: one is added, the processes moved.
        c.update(cpus=0.5)
        cpu = next(p for p in (c._proc.cgroup_paths() if c._proc else []) if "/cpu/" in p)
        with open(os.path.join(cpu, "cpu.cfs_quota_us")) as f:
            assert int(f.read()) == 50_000
        with open(os.path.join(cpu, "cgroup.procs")) as f:
            assert str(c.pid) in f.read().split()
        # An exec after it is in the new cgroup too (the exec server's hierarchies grew).
        for _ in range(2):
            lines = c.exec(["sh", "-c", "grep :cpu: /proc/self/cgroup /proc/1/cgroup"],
                           text=True).stdout.split()  # fmt: skip
            assert len(lines) == 2 and lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]
        # The limits last across a reset.
        c.reset()
        cpu = next(p for p in (c._proc.cgroup_paths() if c._proc else []) if "/cpu/" in p)
        with open(os.path.join(cpu, "cpu.cfs_quota_us")) as f:
            assert int(f.read()) == 50_000
    assert not os.path.exists(cpu)


def test_pause_resume_update_refuse_what_cannot_be(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sleep", "60"])
    with pytest.raises(pyrt.PyrtError, match="created"):
        c.pause()
    with c:
        with pytest.raises(TypeError, match="update"):
            c.update()
        with pytest.raises(pyrt.PyrtError, match="memory"):
            c.update(memory="1k")
        with pytest.raises(TypeError, match="pids_limit"):
            c.update(pids_limit="many")  # type: ignore[arg-type]
        with pytest.raises(pyrt.PyrtError, match="cpus"):
            c.update(cpus=1000)
        assert c.status == "running"
    with pytest.raises(pyrt.PyrtError, match="removed"):
        c.resume()
