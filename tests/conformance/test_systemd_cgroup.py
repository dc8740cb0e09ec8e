"""`--systemd-cgroup` (kubeadm's cgroup driver): the container's cgroup is a transient scope of
systemd's. This machine has no systemd as PID 1, so the test makes one: systemd and a D-Bus
system bus as PID 1 of a new pid and mount namespace with a cgroup2 tree of its own (a
"machine" whose units are only a bus), and each runtime is run inside it, as a kubelet's
containerd would run it. pyrt-runc, crun and runc are checked the same way, from inside the
container (its /proc/self/cgroup) and from systemd's side (the unit)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocitools import _pyrt_runc, config, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starts systemd, as root")

UNITS = {
    # Only a bus: no default dependencies, so nothing of the host's boot (sysctls, mounts,
    # udev) runs in there.
    "pyrt-machine.target": "[Unit]\nDescription=pyrt test machine\n"
    "Wants=dbus.socket dbus.service\n",
    "dbus.socket": "[Unit]\nDefaultDependencies=no\n[Socket]\n"
    "ListenStream=/run/dbus/system_bus_socket\n",
    "dbus.service": "[Unit]\nDefaultDependencies=no\nRequires=dbus.socket\n[Service]\n"
    "Type=notify\nNotifyAccess=main\nExecStart=/usr/bin/dbus-daemon --system "
    "--address=systemd: --nofork --nopidfile --systemd-activation --syslog-only\n",
}

BOOT = """set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
umount -R /sys/fs/cgroup 2>/dev/null || true
mount -t cgroup2 cgroup2 /sys/fs/cgroup
exec env container=pyrt SYSTEMD_UNIT_PATH="$1" /lib/systemd/systemd --system \\
    --unit=pyrt-machine.target --log-target=console
"""


class Machine:
    """A systemd as PID 1 of its own namespaces; ``run`` executes a command in them."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def enter(self, *args: str) -> list[str]:
        """``args`` as a command line run in the machine's mount, pid and cgroup namespaces."""
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-C", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = self.enter(*args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    def unit_state(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit).stdout.strip()


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    assert os.path.exists("/lib/systemd/systemd"), "systemd is missing (.ci/run installs it)"
    assert shutil.which("dbus-daemon"), "dbus is missing (.ci/run installs it)"
    d = tmp_path_factory.mktemp("machine")
    for name, text in UNITS.items():
        (d / name).write_text(text)
    (d / "boot.sh").write_text(BOOT)
    log = open(d / "log", "w")  # noqa: SIM115 (systemd writes to it for the module's life)
    # A cgroup of the machine's own, made the root of its cgroup namespace: what systemd makes
    # in the v2 tree stays below it, and goes with it.
    top = Path("/sys/fs/cgroup/unified")
    if not (top / "cgroup.procs").exists():
        top = Path("/sys/fs/cgroup")
    own = top / f"pyrt-test-machine-{os.getpid()}"
    own.mkdir()
    enter = f'echo $$ > {own}/cgroup.procs && exec "$@"'
    unshare = subprocess.Popen(
        ["sh", "-c", enter, "sh", "unshare", "--cgroup", "--pid", "--fork", "--mount",
         "--mount-proc", "sh", str(d / "boot.sh"), str(d)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    m = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and m is None:
        kids = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        if kids:
            cand = Machine(int(kids[0]))
            bus = cand.run("busctl", "--system", "status", "org.freedesktop.systemd1")
            if bus.returncode == 0:
                m = cand
        time.sleep(0.05)
    try:
        assert m, f"systemd did not come up: {(d / 'log').read_text()[-2000:]}"
        yield m
    finally:
        # PID 1 of the namespace: everything in it goes with it.
        if m:
            os.kill(m.pid, signal.SIGKILL)
        unshare.wait(timeout=10)
        log.close()
        deadline = time.monotonic() + 10
        while own.exists() and time.monotonic() < deadline:
            for sub in sorted((p for p in own.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                own.rmdir()
            time.sleep(0.05)
        assert not own.exists(), f"{own} is left"


RUNTIMES = {"pyrt-runc": _pyrt_runc, "crun": lambda: "crun", "runc": lambda: "runc"}


@pytest.mark.parametrize("name", list(RUNTIMES))
def test_cgroup_is_a_systemd_scope(
    machine: Machine, name: str, rootfs: Path, tmp_path: Path
) -> None:
    """With `--systemd-cgroup` and `cgroupsPath` "pyrt.slice:conf:ID", the container runs in
    the scope conf-ID.scope of pyrt.slice (seen from inside and by systemd), `pause` freezes
    it, and `delete` leaves no unit."""
    binary = RUNTIMES[name]()
    cid = f"sd{os.getpid()}{name.replace('-', '')}"
    unit = f"conf-{cid}.scope"
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    cfg = config(args=["/bin/sh", "-c", "cat /proc/self/cgroup; sleep 60"])
    cfg["linux"]["cgroupsPath"] = f"pyrt.slice:conf:{cid}"
    write_config(b, cfg)
    rt = [binary, "--systemd-cgroup", "--root", str(tmp_path / "state")]
    # The container's stdio in files: a pipe would stay open for as long as it runs.
    out, err = b / "out.txt", b / "err.txt"
    with open(out, "w") as f, open(err, "w") as e:
        created = subprocess.run(
            machine.enter(*rt, "create", "--bundle", str(b), cid),
            stdout=f, stderr=e, timeout=30, check=False,
        )  # fmt: skip
    try:
        assert created.returncode == 0, err.read_text()
        assert machine.run(*rt, "start", cid).returncode == 0
        deadline = time.monotonic() + 10
        while "0::" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        inside = next(ln for ln in out.read_text().splitlines() if ln.startswith("0::"))
        assert inside.startswith(f"0::/pyrt.slice/{unit}"), inside  # crun nests a child cgroup
        assert machine.unit_state(unit) == "active"
        show = machine.run("systemctl", "show", "-p", "ControlGroup", unit).stdout.strip()
        assert show == f"ControlGroup=/pyrt.slice/{unit}", show
        assert machine.run(*rt, "pause", cid).returncode == 0
        st = json.loads(machine.run(*rt, "state", cid).stdout)
        assert st["status"] == "paused"
        # The container's own cgroup (crun's is a child of the scope) is frozen.
        events = Path(f"/proc/{machine.pid}/root/sys/fs/cgroup{inside[3:]}/cgroup.events")
        assert "frozen 1" in events.read_text().splitlines()
        assert machine.run(*rt, "resume", cid).returncode == 0
    finally:
        deleted = machine.run(*rt, "delete", "--force", cid)
    assert deleted.returncode == 0, deleted.stderr
    assert machine.unit_state(unit) in ("inactive", "unknown", "failed")
    assert machine.run("systemctl", "list-units", "--all", "--no-legend", unit).stdout.strip() == ""


def test_a_limit_the_machine_cannot_apply_fails_and_leaves_nothing(
    machine: Machine, rootfs: Path, tmp_path: Path
) -> None:
    """pyrt-runc: the limits go to systemd as unit properties (MemoryMax, TasksMax,
    CPUQuotaPerSecUSec, which systemd accepts: the scope starts) and to the scope's directory;
    this machine's v2 tree has no memory controller (the host binds them all to v1), so the
    create fails naming it, and neither the unit nor the state is left."""
    cid = f"lim{os.getpid()}"
    unit = f"conf-{cid}.scope"
    b = tmp_path / "bundle"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    cfg = config(args=["/bin/true"])
    cfg["linux"]["cgroupsPath"] = f"pyrt.slice:conf:{cid}"
    cfg["linux"]["resources"] = {
        "memory": {"limit": 64 << 20}, "pids": {"limit": 50},
        "cpu": {"quota": 50000, "period": 100000},
    }  # fmt: skip
    write_config(b, cfg)
    state = tmp_path / "state"
    rt = [_pyrt_runc(), "--systemd-cgroup", "--root", str(state)]
    with open(b / "out.txt", "w") as f, open(b / "err.txt", "w") as e:
        p = subprocess.run(machine.enter(*rt, "create", "--bundle", str(b), cid),
                           stdout=f, stderr=e, timeout=30, check=False)  # fmt: skip
    assert p.returncode == 1
    err = (b / "err.txt").read_text()
    assert "memory" in err and "controller" in err, err
    assert machine.run("systemctl", "list-units", "--all", "--no-legend", unit).stdout == ""
    assert not state.exists() or os.listdir(state) == []
