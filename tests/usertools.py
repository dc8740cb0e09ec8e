"""Running test code as an unprivileged user: nobody (no subordinate ids) and pyrt-ci (which
.ci/run creates with a /etc/subuid range), each in a process of its own that reports back."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import make_busybox_rootfs, make_tarball

SETPRIV = shutil.which("setpriv")
NEEDS_SETPRIV = pytest.mark.skipif(SETPRIV is None, reason="needs setpriv (util-linux)")

NOBODY = 65534


def subid_user() -> tuple[int, int] | None:
    """(uid, gid) of pyrt-ci, the user with a subordinate id range, if this machine has it."""
    try:
        pw = pwd.getpwnam("pyrt-ci")
    except KeyError:
        return None
    with open("/etc/subuid") as f:
        if not any(line.startswith("pyrt-ci:") for line in f):
            return None
    return pw.pw_uid, pw.pw_gid


def public_dir() -> Iterator[Path]:
    """A world-readable directory with a busybox rootfs and its tarball in it."""
    d = Path(tempfile.mkdtemp(prefix="pyrt-rootless-"))
    os.chmod(d, 0o755)
    make_busybox_rootfs(d / "rootfs")
    make_tarball(d / "rootfs", d / "rootfs.tar.gz")
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    yield d
    shutil.rmtree(d)


def as_user(uid: int, gid: int, code: str, public: Path, tmp_path: Path) -> dict[str, Any]:
    """Runs ``code`` (which sets ``out``, a dict) as uid:gid with a home of its own; returns
    ``out``, with ``leftover`` listing what pyrt's state directory still holds afterwards."""
    home = Path(tempfile.mkdtemp(prefix=f"home-{uid}-", dir=public))
    os.chown(home, uid, gid)
    prog = (
        textwrap.dedent(
            f"""
        import json, os, pyrt
        from pathlib import Path
        PUBLIC = Path({str(public)!r})
        out = {{}}
        """
        )
        + textwrap.dedent(code)
        + textwrap.dedent(
            """
        from pyrt.host.places import state_root
        c = state_root() / "containers"
        out["leftover"] = sorted(os.listdir(c)) if c.is_dir() else []
        print("RESULT " + json.dumps(out))
        """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRT_", "XDG_"))}
    env["HOME"] = str(home)
    r = subprocess.run(
        [
            SETPRIV or "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            sys.executable,
            "-c",
            prog,
        ],
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=120,
    )
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout + r.stderr
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
