"""OCI runtimes driven through their command line only, as an orchestrator drives them: pyrt-runc,
and crun and runc from Debian for the same conformance suite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

# runtime-spec config-linux.md, "Default Filesystems"; the rest as `runc spec` writes it.
BASE_CONFIG: dict[str, Any] = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/true"],
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        "cwd": "/",
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "conformance",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
    ],
    "linux": {
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
        ],
    },
}


def _pyrt_runc() -> str:
    beside = Path(sys.executable).parent / "pyrt-runc"
    found = str(beside) if beside.exists() else shutil.which("pyrt-runc")
    assert found, "pyrt-runc is not installed (pip install -e . builds it)"
    return found


def _crun_wrapper(tmp: Path) -> str:
    """crun 1.8 (Debian 12) refuses this machine's hybrid cgroup layout while a v2 tree is
    mounted at /sys/fs/cgroup/unified; it runs in a mount namespace of its own without it."""
    w = tmp / "crun"
    w.write_text(
        "#!/bin/sh\n"
        "exec unshare -m --propagation slave sh -c "
        '\'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"\' crun "$@"\n'
    )
    w.chmod(0o755)
    return str(w)


#: A container's stdin, when a test gives it none: an empty pipe rather than what pytest
#: inherited (/dev/null under CI). crun chowns its stdio to the container's root, and with a user
#: namespace that made the host's /dev/null belong to uid 300000 (runc leaves /dev/null alone).
NO_INPUT = subprocess.PIPE


class Runtime:
    """One OCI runtime binary and a state root of the test's own."""

    def __init__(self, name: str, binary: str, root: Path) -> None:
        self.name = name
        self.binary = binary
        self.root = root
        self.ids: list[str] = []

    def cmd(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        kw.setdefault("capture_output", True)
        if "stdin" not in kw:
            kw.setdefault("input", "")  # (see NO_INPUT)
        p = subprocess.run(self.cmd(*args), text=True, timeout=timeout, check=False, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)}: {p.returncode}: {p.stderr}")
        return p

    def new_id(self) -> str:
        cid = f"conf-{uuid.uuid4().hex[:10]}"
        self.ids.append(cid)
        return cid

    def state(self, cid: str) -> dict[str, Any]:
        return json.loads(self("state", cid).stdout)  # type: ignore[no-any-return]

    def wait_status(self, cid: str, status: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == status or time.monotonic() > deadline:
                return st
            time.sleep(0.02)

    def create(
        self, bundle: Path, cid: str, out: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`create` with the container's stdio in files: a pipe would stay open (and subprocess
        waiting) for as long as the container runs. `stderr` is the runtime's messages."""
        out = out or bundle / "out.txt"
        err = out.with_suffix(".err")
        args = ["create", "--bundle", str(bundle), "--pid-file", str(bundle / "pid"), cid]
        with open(out, "w") as f, open(err, "w") as e:
            p = subprocess.run(self.cmd(*args), stdin=NO_INPUT, stdout=f, stderr=e, timeout=20,
                               check=False)  # fmt: skip
        return subprocess.CompletedProcess(p.args, p.returncode, "", err.read_text())


def write_config(bundle: Path, cfg: dict[str, Any]) -> None:
    # runc takes no symlink as the root: give the real path (relative paths are the bundle's).
    root = bundle / cfg["root"]["path"]
    if root.is_symlink():
        cfg = dict(cfg, root=dict(cfg["root"], path=str(root.resolve())))
    (bundle / "config.json").write_text(json.dumps(cfg))


def config(**process: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["process"].update(process)
    return cfg


def spec_requires(rt: Runtime, ok: bool, clause: str, what: str) -> None:
    """A requirement of the spec: pyrt-runc must meet it; a peer that does not is recorded as
    an expected failure that names the clause, not hidden."""
    if ok:
        return
    if rt.name == "pyrt-runc":
        pytest.fail(f"{clause}: {what}")
    pytest.xfail(f"{rt.name} departs from {clause}: {what}")


#: A container command that counts in /tmp/tick, twenty times a second.
TICK = "i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.05; done"


def ticks(pid: int) -> bool:
    """Whether the counter of ``TICK`` in the container whose init is ``pid`` moves (read from
    the host through the container's root): frozen containers do not count."""
    import time

    clock = Path(f"/proc/{pid}/root/tmp/tick")
    first = clock.read_text() if clock.exists() else ""
    time.sleep(0.4)
    return clock.exists() and clock.read_text() != first
