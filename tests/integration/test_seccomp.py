"""The default seccomp filter, observed from inside: what a denied call returns, and that the
filter covers exec'd processes too. The host image gives the probe a Python with ctypes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pyrt
from pyrt import _core
from pyrt.host.state import containers_root

PROBE = """
import ctypes, errno, fcntl, os, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.personality.argtypes = [ctypes.c_ulong]  # glibc's signature: no sign extension
def call(nr, *args):
    r = libc.syscall(nr, *args)
    return 0 if r >= 0 else ctypes.get_errno()
out = {}
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x")
except OSError as e:
    out["tiocsti"] = e.errno
out["keyctl"] = call(250, 0, 0)          # not in the allow-list
out["newer"] = call(462, 0, 0)           # past every syscall the profile names
out["personality_query"] = 0 if libc.personality(0xFFFFFFFF) >= 0 else ctypes.get_errno()
r = libc.personality(0x0040000)          # ADDR_NO_RANDOMIZE: not a harmless persona
out["personality_norandom"] = 0 if r >= 0 else ctypes.get_errno()
out["unshare"] = call(272, 0x10000000)  # unshare(CLONE_NEWUSER), last: it changes who we are
print(out)
"""


def probe(**opts: object) -> dict[str, int]:
    r = pyrt.run(pyrt.Image.host(), ["python3", "-c", PROBE], text=True, **opts)  # type: ignore[arg-type]
    assert r.returncode == 0, r.stderr
    import ast

    return ast.literal_eval(r.stdout)


def test_status_shows_the_filter(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["grep", "-E", "^(Seccomp|NoNewPrivs):", "/proc/self/status"], text=True)
    assert r.stdout.split() == ["NoNewPrivs:", "1", "Seccomp:", "2"]


def test_denied_calls_and_their_errnos() -> None:
    out = probe()
    assert out["tiocsti"] == errno.EPERM  # terminal injection (CVE-2017-5226)
    assert out["keyctl"] == errno.EPERM
    assert out["newer"] == errno.ENOSYS  # newer than the profile: "not implemented"
    assert out["personality_query"] == 0  # an allowed argument
    assert out["personality_norandom"] == errno.EPERM  # a denied one
    assert out["unshare"] == errno.EPERM  # namespaces need CAP_SYS_ADMIN, which is not held


def test_without_the_filter_the_same_calls_behave_differently() -> None:
    # privileged: no filter (Docker's rule), so the probe's calls reach the kernel.
    out = probe(privileged=True)
    assert out["tiocsti"] == errno.ENOTTY  # stdin is /dev/null, not a terminal
    assert out["personality_norandom"] == 0
    assert out["unshare"] == 0


def test_cap_add_opens_the_matching_calls() -> None:
    out = probe(cap_add=["SYS_ADMIN"])
    assert out["unshare"] == 0


def test_execs_are_filtered_too(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "60"]) as c:
        r = c.exec(["grep", "^Seccomp:", "/proc/self/status"], text=True)
        assert r.stdout.split() == ["Seccomp:", "2"]
        assert "Operation not permitted" in c.exec(["unshare", "-U", "true"], text=True).stderr


def test_an_exec_from_another_process_is_filtered(image: pyrt.Image) -> None:
    # `pyrt exec` from another process takes the profile from the container's state.json,
    # where it is written as the text the core was sent.
    with pyrt.Container(image, ["sleep", "60"]) as c:
        state = json.loads((containers_root() / c.id / "state.json").read_text())
        assert state["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
        assert state["process"]["args"] == ["sleep", "60"]
        r = subprocess.run(
            [sys.executable, "-m", "pyrt.cli", "exec", c.id, "sh", "-c",
             "grep ^Seccomp: /proc/self/status; unshare -U true"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.stdout.split() == ["Seccomp:", "2"], r.stderr
        assert "Operation not permitted" in r.stderr, "unshare is refused under the filter"


def test_masked_and_read_only_paths(image: pyrt.Image) -> None:
    script = (
        "wc -c < /proc/timer_list; ls /sys/firmware | wc -l;"  # masked: empty
        "touch /sys/firmware/x 2>/dev/null; echo firmware=$?;"  # masked dir: not writable
        "echo 1 > /proc/sys/kernel/panic 2>/dev/null; echo sys=$?;"  # read-only
        "echo c > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?"
    )
    r = pyrt.run(image, ["sh", "-c", script], text=True)
    assert r.stdout.split() == ["0", "0", "firmware=1", "sys=1", "sysrq=1"]


def test_a_specs_own_seccomp_is_honoured(rootfs: Path) -> None:
    # What a bundle brings: allow everything but mkdir, which gets EACCES.
    from pyrt.oci import spec as S

    doc = S.build(
        S.ContainerSpec(
            root=S.RootSpec(str(rootfs), readonly=True),
            process=S.ProcessSpec(["/bin/mkdir", "/tmp/x"]),
            mounts=[pyrt.Tmpfs("/tmp").to_spec()],
            seccomp={
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["mkdir", "mkdirat"],
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": errno.EACCES,
                    }
                ],
            },
        )
    )
    r_fd, w_fd = os.pipe()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        p = _core.spawn(json.dumps(doc), null, null, w_fd)
        os.close(w_fd)
        assert p.wait(10) == 1
        assert b"Permission denied" in os.read(r_fd, 4096)
    finally:
        os.close(r_fd)
        os.close(null)
