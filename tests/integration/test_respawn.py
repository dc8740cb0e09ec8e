"""A reset's start in one call of the core (`_core.respawn`): it waits for the end of what it
replaces and starts nothing while that runs, a state file it cannot write leaves nothing
started, the exec server it starts serves the new container, and what other processes read
of a reset container (its state file, `pyrt exec`) is the new one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyrt
from helpers import exec_servers, foreign_pidns_processes, pyrt_cgroups, settles
from pyrt import _core
from pyrt.host.state import pid_start_time
from pyrt.oci import spec


def spec_json(rootfs: Path, args: list[str], cgroup: str) -> str:
    doc = spec.build(spec.ContainerSpec(root=spec.RootSpec(str(rootfs), readonly=True),
                                        process=spec.ProcessSpec(args)))  # fmt: skip
    doc["linux"]["cgroupsPath"] = cgroup
    return json.dumps(doc)


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDWR)
    yield fd
    os.close(fd)


def end(p: _core.Process) -> None:
    p.kill(signal.SIGKILL)
    p.wait(30)
    p.destroy_cgroup()


def test_respawn_starts_nothing_while_what_it_replaces_runs(rootfs: Path, devnull: int) -> None:
    old = _core.spawn(spec_json(rootfs, ["sleep", "60"], f"pyrt-old-{os.getpid()}"),
                      devnull, devnull, devnull)  # fmt: skip
    new_cgroup = f"pyrt-new-{os.getpid()}"
    sent = spec_json(rootfs, ["sleep", "60"], new_cgroup)
    try:
        before = foreign_pidns_processes()
        got = _core.respawn(sent, devnull, devnull, devnull, replaces=old, serve=True)
        # Not killed, so not ended: handed back, nothing started, the old one untouched.
        assert got is None
        assert old.wait(0) is None
        assert foreign_pidns_processes() - before == set()
        assert not any(new_cgroup in p for p in pyrt_cgroups())
        old_cgroups = old.cgroup_paths()
        assert old_cgroups and all(os.path.isdir(p) for p in old_cgroups)

        old.kill(signal.SIGKILL)
        got = _core.respawn(sent, devnull, devnull, devnull, replaces=old, serve=True)
        assert got is not None
        new, server, started = got
        try:
            assert old.returncode == -signal.SIGKILL
            assert not any(os.path.exists(p) for p in old_cgroups)  # removed with its end
            assert new.wait(0) is None
            assert started is None  # (read for a state file only; none was asked for)
            assert all(new_cgroup in p and os.path.isdir(p) for p in new.cgroup_paths())
            # (It joins the container and takes its name a moment after its start returns.)
            assert server is not None and settles(lambda: server.pid in exec_servers())
        finally:
            if server is not None:
                server.close()
            end(new)
    finally:
        end(old)


def test_the_exec_server_it_starts_serves_the_new_container(rootfs: Path, devnull: int) -> None:
    got = _core.respawn(spec_json(rootfs, ["sleep", "60"], f"pyrt-served-{os.getpid()}"),
                        devnull, devnull, devnull, serve=True)  # fmt: skip
    assert got is not None
    proc, server, _ = got
    try:
        assert server is not None
        r, w = os.pipe()
        try:
            process = json.dumps(spec.process_dict(spec.ProcessSpec(["cat", "/proc/1/cmdline"])))
            e = _core.exec(proc.pid, process, devnull, w, devnull, proc.cgroup_paths(),
                           server=server)  # fmt: skip
            os.close(w)
            w = -1
            assert e.wait(30) == 0
            assert os.read(r, 4096) == b"sleep\x0060\x00"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
        # Its fork was the server's, not a pyrt-child of ours.
        assert server.pid in exec_servers()
    finally:
        if server is not None:
            server.close()
        end(proc)


def test_a_state_file_it_cannot_write_leaves_nothing_started(
    rootfs: Path, devnull: int, tmp_path: Path
) -> None:
    cgroup = f"pyrt-unwritten-{os.getpid()}"
    missing = tmp_path / "gone" / "state.json"
    before = foreign_pidns_processes()
    servers = exec_servers()
    with pytest.raises(OSError) as e:
        _core.respawn(spec_json(rootfs, ["sleep", "60"], cgroup), devnull, devnull, devnull,
                      serve=True, state=(str(missing), '{"id": "x"}'))  # fmt: skip
    assert str(missing) in str(e.value)
    assert foreign_pidns_processes() - before == set()
    assert not any(cgroup in p for p in pyrt_cgroups())
    assert exec_servers() == servers


@pytest.mark.parametrize("kind", ["host", "rootfs"])
def test_other_processes_find_the_reset_container(image: pyrt.Image, kind: str) -> None:
    """A reset writes the state of the new first process in the core's call: `pyrt exec`
    from another process lands in the new container, and the state names its pid, start
    time and cgroups."""
    img = pyrt.Image.host() if kind == "host" else image
    c = pyrt.Container(img, ["sleep", "3600"], init=True).start(detached=True)
    try:
        old_pid = c.pid
        c.reset()
        assert c.pid != old_pid
        assert c._dir is not None
        state = json.loads(c._dir.state_file.read_text())
        assert state["status"] == "running"
        assert state["pid"] == c.pid
        assert state["pid_start"] == pid_start_time(c.pid)
        assert c._proc is not None and state["cgroups"] == c._proc.cgroup_paths()
        assert state["id"] == c.id and "process" in state
        probe = "readlink /proc/1/ns/pid; readlink /proc/self/ns/mnt"
        out = subprocess.run([sys.executable, "-m", "pyrt", "exec", c.id, "sh", "-c", probe],
                             capture_output=True, check=True, cwd="/").stdout  # fmt: skip
        # In the new container's namespaces (the old one's are gone with it).
        pidns, mntns = out.decode().split()
        assert pidns == os.readlink(f"/proc/{c.pid}/ns/pid")
        assert mntns == os.readlink(f"/proc/{c.pid}/ns/mnt")
    finally:
        c.remove()


def test_a_reset_that_cannot_start_leaves_nothing_of_the_old_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The killed container of a reset is ended by the start's call of the core; when the
    start fails before (here the call itself refuses, as a fake), the reset ends it: no
    process, cgroup or exec server of it is left, and the container can still be removed."""
    c = pyrt.Container(pyrt.Image.host(), ["sleep", "3600"], init=True).start()
    try:
        assert c._proc is not None and c.pid is not None
        old_pid, cgroups = c.pid, c._proc.cgroup_paths()
        for _ in range(2):
            c.exec(["true"])  # (its exec server starts at the second)
        assert settles(lambda: bool(exec_servers()))

        def refuse(*args: object, **kwargs: object) -> None:
            raise pyrt.SpawnError("refused for the test", stage="spawn", errno=1)

        monkeypatch.setattr(_core, "respawn", refuse)
        with pytest.raises(pyrt.SpawnError, match="refused for the test"):
            c.reset()
        assert not os.path.exists(f"/proc/{old_pid}")  # reaped, not a zombie of ours
        assert cgroups and not any(os.path.exists(p) for p in cgroups)
        assert not exec_servers()
    finally:
        c.remove()
