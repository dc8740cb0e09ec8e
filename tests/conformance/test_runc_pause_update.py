"""runc's `pause`, `resume` and `update`, which engines send (containerd's
UpdateContainerResources, `ctr task pause`, `podman pause/update`): the same commands against
pyrt-runc, crun and runc, checked from inside the container (a counter that stops and goes on,
the limits the container's own cgroup files show) and through `state`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from ocitools import Runtime, config, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs containers as root")

# Written by rename: a freeze never catches the file half-written.
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/n.new; mv /tmp/n.new /tmp/n; usleep 5000; done"
)


def started(
    rt: Runtime, bundle: Path, script: str, resources: dict[str, object] | None = None
) -> str:
    cfg = config(args=["/bin/sh", "-c", script])
    if resources is not None:
        cfg["linux"]["resources"] = resources
    cfg["linux"]["cgroupsPath"] = f"pyrt-conf-{os.getpid()}-{rt.name}-{time.monotonic_ns()}"
    write_config(bundle, cfg)
    cid = rt.new_id()
    p = rt.create(bundle, cid)
    assert p.returncode == 0, p.stderr
    rt("start", cid)
    return cid


def inside(rt: Runtime, cid: str, *argv: str) -> str:
    return rt("exec", cid, *argv).stdout


def count(rt: Runtime, cid: str) -> int:
    pid = rt.state(cid)["pid"]
    for _ in range(500):
        try:
            return int(Path(f"/proc/{pid}/root/tmp/n").read_text())
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    raise AssertionError("the counter never started")


def test_pause_and_resume(rt: Runtime, bundle: Path) -> None:
    cid = started(rt, bundle, COUNTER)
    count(rt, cid)
    rt("pause", cid)
    assert rt.state(cid)["status"] == "paused"
    at = count(rt, cid)
    time.sleep(0.3)
    assert count(rt, cid) == at, "a paused container went on counting"
    assert rt("exec", cid, "true", check=False).returncode != 0
    rt("resume", cid)
    assert rt.state(cid)["status"] == "running"
    deadline = time.monotonic() + 10
    while count(rt, cid) == at and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count(rt, cid) > at
    rt("pause", cid)
    assert rt("delete", cid, check=False).returncode != 0  # not stopped
    rt("delete", "--force", cid)
    assert rt("state", cid, check=False).returncode != 0


def cgroup_file(rt: Runtime, cid: str, controller: str, name: str) -> str:
    """A file of the container's cgroup, read from the host (/proc/PID/cgroup names it)."""
    pid = rt.state(cid)["pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            mount = f"/sys/fs/cgroup/{controller}"
            if not os.path.isdir(mount):
                mount = f"/sys/fs/cgroup/{ctrls}"
            return Path(mount, path.lstrip("/"), name).read_text().strip()
    raise AssertionError(f"no {controller} cgroup for {cid}")


def test_update_flags_and_resources_json(rt: Runtime, bundle: Path) -> None:
    cid = started(rt, bundle, "sleep 600")
    rt("update", "--memory", str(64 << 20), "--pids-limit", "30", cid)
    assert cgroup_file(rt, cid, "memory", "memory.limit_in_bytes") == str(64 << 20)
    assert cgroup_file(rt, cid, "pids", "pids.max") == "30"
    res = {"memory": {"limit": 48 << 20}, "cpu": {"quota": 20000, "period": 100000}}
    rt("update", "--resources", "-", cid, input=json.dumps(res))
    assert cgroup_file(rt, cid, "memory", "memory.limit_in_bytes") == str(48 << 20)
    assert cgroup_file(rt, cid, "cpu", "cpu.cfs_quota_us") == "20000"
    # The limit is the container's: what the command inside can fork is bounded.
    rt("update", "--pids-limit", "5", cid)
    r = rt("exec", cid, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait",
           check=False)  # fmt: skip
    assert r.returncode != 0 or "fork" in r.stderr
    rt("delete", "--force", cid)


def test_every_memory_field_of_the_spec(rt: Runtime, bundle: Path) -> None:
    """linux.resources.memory: the limit, swap, the reservation (a soft limit), swappiness and
    the OOM killer's switch all land in the container's memory cgroup (cgroup v1 here); the
    reservation can be changed by `update --memory-reservation`."""
    memory = {
        "limit": 96 << 20,
        "swap": 96 << 20,
        "reservation": 32 << 20,
        "swappiness": 10,
        "disableOOMKiller": True,
    }
    cid = started(rt, bundle, "sleep 600", {"memory": memory})

    def read(name: str) -> str:
        return cgroup_file(rt, cid, "memory", name)

    assert read("memory.limit_in_bytes") == str(96 << 20)
    assert read("memory.soft_limit_in_bytes") == str(32 << 20)
    assert read("memory.swappiness") == "10"
    assert "oom_kill_disable 1" in read("memory.oom_control")
    rt("update", "--memory-reservation", str(16 << 20), cid)
    assert read("memory.soft_limit_in_bytes") == str(16 << 20)
    rt("delete", "--force", cid)


def test_update_of_a_stopped_container_fails(rt: Runtime, bundle: Path) -> None:
    cid = started(rt, bundle, "true")
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"
    assert rt("update", "--memory", "64m", cid, check=False).returncode != 0
    assert rt("pause", cid, check=False).returncode != 0
