"""One regression test per runtime-escape CVE of runc and crun: each attempts the attack against
pyrt and checks that it fails and the host is unchanged. (CVE-2019-5736 and CVE-2017-5226 have
theirs in test_host_protection.py, beside the other host-protection tests.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import pyrt
from pyrt import _core
from pyrt.oci import spec


def image_with(rootfs: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(rootfs, root, symlinks=True)
    return root


def test_cve_2024_21626_leaked_descriptor_as_working_directory(image: pyrt.Image) -> None:
    # runc leaked a descriptor of the host's cgroupfs; workdir=/proc/self/fd/N then left the
    # container with its working directory on the host. pyrt closes every descriptor but its
    # own pipes before setup, and checks after chdir that the directory is inside the root.
    for fd in range(3, 12):
        with pytest.raises(pyrt.SpawnError) as ei:
            pyrt.run(image, ["pwd"], workdir=f"/proc/self/fd/{fd}")
        assert ei.value.stage == "cwd"


def test_cve_2019_16884_image_with_a_symlinked_proc(rootfs: Path, tmp_path: Path) -> None:
    # An image whose /proc is a symlink had runc mount procfs elsewhere, past the LSM profile.
    root = image_with(rootfs, tmp_path, "img")
    shutil.rmtree(root / "proc")
    os.symlink("/tmp", root / "proc")
    with pytest.raises(pyrt.SpawnError, match="/proc is a symlink"):
        pyrt.run(pyrt.Image.load(root), ["true"])


@pytest.mark.parametrize("cve", ["CVE-2019-19921", "CVE-2023-27561"])
def test_volume_through_a_symlink_into_proc(rootfs: Path, tmp_path: Path, cve: str) -> None:
    # A volume whose target is an image symlink into /proc shadowed procfs files (a writable
    # fake /proc/self/attr). pyrt resolves the target inside the root and refuses /proc there.
    root = image_with(rootfs, tmp_path, "img")
    os.symlink("/proc/self", root / "vol")
    src = tmp_path / "fake"
    src.mkdir()
    (src / "attr").mkdir()
    with pytest.raises(pyrt.SpawnError, match="mounting over /proc or /sys is refused"):
        pyrt.run(pyrt.Image.load(root), ["true"], mounts=[pyrt.Bind(src, "/vol")])


def test_cve_2021_30465_mount_target_symlink_cannot_leave_the_root(
    rootfs: Path, tmp_path: Path
) -> None:
    # A target swapped for a symlink to a host path mounted the volume on the host. pyrt opens
    # every target with RESOLVE_IN_ROOT and mounts through that descriptor: an absolute link
    # points inside the container's root, and nothing happens on the host.
    outside = tmp_path / "host-dir"
    outside.mkdir()
    root = image_with(rootfs, tmp_path, "img")
    os.symlink(str(outside), root / "target")
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("x")
    r = pyrt.run(pyrt.Image.load(root), ["ls", "/target"], mounts=[pyrt.Bind(src, "/target")])
    assert r.stdout == b"payload\n"
    assert os.listdir(outside) == []
    assert not any(
        "host-dir" in line for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


def test_cve_2022_29162_no_inheritable_capabilities(image: pyrt.Image) -> None:
    # runc gave exec'd processes inheritable capabilities, which a file-capability binary could
    # turn into real ones. pyrt's sets are empty for the command and for every exec.
    fields = "grep -E '^Cap(Inh|Amb):' /proc/self/status"
    r = pyrt.run(image, ["sh", "-c", fields], cap_add=["NET_ADMIN"], text=True)
    assert r.stdout.split() == ["CapInh:", "0" * 16, "CapAmb:", "0" * 16]
    with pyrt.Container(image, ["sleep", "60"]) as c:
        r2 = c.exec(["sh", "-c", fields], text=True)
        assert r2.stdout.split() == ["CapInh:", "0" * 16, "CapAmb:", "0" * 16]


def test_cve_2025_31133_masking_uses_the_hosts_dev_null(rootfs: Path, tmp_path: Path) -> None:
    # runc masked files by binding the container's /dev/null, which the container could replace
    # with a symlink to a procfs file, making that file writable. pyrt binds the host's
    # /dev/null (before pivot_root), whatever the image or the container do to theirs.
    root = image_with(rootfs, tmp_path, "img")
    (root / "dev").mkdir(exist_ok=True)
    os.symlink("/proc/sys/kernel/core_pattern", root / "dev" / "null")
    r = pyrt.run(pyrt.Image.load(root), ["stat", "-c", "%F %t:%T", "/proc/kcore", "/proc/keys",
                                         "/proc/timer_list"], text=True)  # fmt: skip
    lines = [x for x in r.stdout.splitlines() if x]
    assert lines and all(x == "character special file 1:3" for x in lines), r.stdout + r.stderr


def test_cve_2025_52565_no_console_to_race(image: pyrt.Image) -> None:
    # runc bind mounted the terminal onto /dev/console, a target that could be raced. pyrt makes
    # no /dev/console at all: the pty comes from the container's own devpts by TIOCGPTPEER.
    with pyrt.Container(
        image, ["sh", "-c", "test -e /dev/console; echo $?; sleep 60"], tty=True
    ) as c:
        assert c.console is not None
        c.wait_for_log("1", timeout=10)


def test_cve_2025_52881_proc_writes_only_to_procfs(tmp_path: Path) -> None:
    # runc's writes to /proc (sysctls, LSM labels) could be redirected by a mount shadowing the
    # file with one elsewhere. pyrt checks that what it writes is on a procfs first; here a host
    # file is bound over the sysctl's path, and it must stay as it was.
    root = tmp_path / "r"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "true")
    decoy = tmp_path / "decoy"
    decoy.write_text("untouched\n")
    doc = spec.build(
        spec.ContainerSpec(
            root=spec.RootSpec(str(root)),
            process=spec.ProcessSpec(["/bin/true"]),
            mounts=[pyrt.Bind(decoy, "/proc/sys/net/ipv4/ip_forward").to_spec()],
        )
    )
    doc["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        with pytest.raises(pyrt.SpawnError, match="not on a procfs"):
            p = _core.spawn(json.dumps(doc), devnull, devnull, devnull)
            p.kill(9)
            p.wait()
    finally:
        os.close(devnull)
    assert decoy.read_text() == "untouched\n"


def test_sysctls_outside_the_allow_list_are_refused() -> None:
    doc = spec.build(spec.ContainerSpec(root=spec.RootSpec("/r"), process=spec.ProcessSpec(["x"])))
    doc["linux"]["sysctl"] = {"kernel.panic": "1"}
    with pytest.raises(pyrt.SpawnError, match="would change the host"):
        _core.plan(json.dumps(doc))
    doc["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    doc["linux"]["namespaces"] = [n for n in doc["linux"]["namespaces"] if n["type"] != "network"]
    with pytest.raises(pyrt.SpawnError, match="network namespace"):
        _core.plan(json.dumps(doc))


def test_cgroupfs_is_read_only_and_namespaced(image: pyrt.Image) -> None:
    script = "touch /sys/fs/cgroup/x 2>/dev/null; echo $?; cat /proc/self/cgroup | grep -c ':/$'"
    r = pyrt.run(image, ["sh", "-c", script], memory="64m", text=True)
    rc, at_root = r.stdout.split()
    assert rc == "1" and int(at_root) >= 1


def test_a_setuid_binary_gains_nothing(rootfs: Path, tmp_path: Path) -> None:
    # no_new_privs: a setuid-root binary run by a non-root user stays that user.
    # A static probe that prints its effective uid (busybox drops setuid privileges itself).
    import subprocess

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the setuid probe")
    root = image_with(rootfs, tmp_path, "img")
    (root / "suid").mkdir()
    src = tmp_path / "euid.c"
    src.write_text(
        '#include <stdio.h>\n#include <unistd.h>\nint main(void){printf("%d\\n", geteuid());}\n'
    )
    subprocess.run([gcc, "-static", "-O1", "-o", str(root / "suid" / "id"), str(src)], check=True)
    os.chmod(root / "suid" / "id", 0o4755)
    r = pyrt.run(pyrt.Image.load(root), ["/suid/id", "-u"], user="app", text=True)
    assert (r.returncode, r.stdout.strip()) == (0, "1000"), r.stderr
    # Without no_new_privs the bit works: the same binary gives root.
    r = pyrt.run(pyrt.Image.load(root), ["/suid/id", "-u"], user="app", privileged=True, text=True)
    assert r.stdout.strip() == "0"
