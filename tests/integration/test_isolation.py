"""What a process inside a container sees: checked from inside, with busybox as the probe."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import pyrt
from helpers import small_tmpfs


def sh(image: pyrt.Image, script: str, **opts: object) -> pyrt.Result:
    return pyrt.run(image, ["sh", "-c", script], text=True, **opts)  # type: ignore[arg-type]


def test_pid1_is_the_command(image: pyrt.Image) -> None:
    r = sh(image, "echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
    lines = r.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("sh -c echo $$")


def test_host_processes_are_invisible(image: pyrt.Image) -> None:
    r = sh(image, "ls /proc | grep -E '^[0-9]+$'")
    pids = {int(p) for p in r.stdout.split()}
    # Only the shell (pid 1) and the ls and grep it ran: nothing of the host's.
    assert 1 in pids and len(pids) <= 4 and max(pids) < 10, pids


def test_hostname(image: pyrt.Image) -> None:
    assert sh(image, "hostname", hostname="box").stdout.strip() == "box"
    default = pyrt.Container(image, ["hostname"])
    r = default.run(text=True)
    assert r.stdout.strip() == default.id[:12]
    assert socket.gethostname() != "box"


def test_only_loopback_with_network_none(image: pyrt.Image) -> None:
    r = sh(image, "ls /sys/class/net; cat /sys/class/net/lo/operstate; ip -o addr show lo")
    lines = r.stdout.splitlines()
    assert lines[0] == "lo" and len([x for x in lines if not x.startswith(("unknown", "1:"))]) == 1
    assert "127.0.0.1" in r.stdout
    # No route out: connecting anywhere but loopback fails.
    r = sh(image, "nc -w 1 1.1.1.1 80 </dev/null; echo rc=$?")
    assert "rc=0" not in r.stdout


def test_loopback_works_inside(image: pyrt.Image) -> None:
    script = "(echo pong | nc -l -p 7777 &) ; sleep 0.2; nc 127.0.0.1 7777 </dev/null"
    assert "pong" in sh(image, script).stdout


def test_network_host_sees_host_interfaces(image: pyrt.Image) -> None:
    host = sorted(os.listdir("/sys/class/net"))
    r = sh(image, "ls /sys/class/net", network="host")
    assert sorted(r.stdout.split()) == host


def test_root_is_the_image(image: pyrt.Image, tmp_path: Path) -> None:
    marker = Path("/tmp") / f"pyrt-host-marker-{os.getpid()}"
    marker.write_text("host")
    try:
        r = sh(image, f"cat /etc/marker; test -e {marker} && echo visible || echo invisible")
        assert r.stdout.split() == ["busybox-image", "invisible"]
    finally:
        marker.unlink()


def test_writes_go_to_a_private_layer(image: pyrt.Image, rootfs: Path) -> None:
    r = sh(image, "echo changed > /etc/marker; rm /bin/ls; cat /etc/marker")
    assert r.stdout.strip() == "changed"
    assert (rootfs / "etc" / "marker").read_text() == "busybox-image\n"
    assert (rootfs / "bin" / "ls").is_symlink()
    # And the next container starts from the image again.
    assert sh(image, "cat /etc/marker").stdout.strip() == "busybox-image"


def test_proc_is_the_containers_own(image: pyrt.Image) -> None:
    r = sh(image, "grep -E ' /proc ' /proc/self/mounts; cat /proc/self/status | grep ^NSpid")
    assert r.stdout.startswith("proc /proc proc rw,nosuid,nodev,noexec")
    # NSpid lists the pid in each namespace that this procfs can see: a procfs of the
    # container's own pid namespace sees just one level, and a small number.
    nspid = r.stdout.splitlines()[1].split()[1:]
    assert len(nspid) == 1 and int(nspid[0]) < 10


def test_dev_is_a_fresh_tmpfs_with_the_standard_nodes(image: pyrt.Image) -> None:
    r = sh(image, "ls /dev | sort | tr '\\n' ' '; echo; stat -c '%A %t,%T' /dev/null /dev/zero")
    names = r.stdout.splitlines()[0].split()
    assert names == sorted(
        ["core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
         "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    )  # fmt: skip
    assert r.stdout.splitlines()[1:] == ["crw-rw-rw- 1,3", "crw-rw-rw- 1,5"]
    assert sh(image, "echo x > /dev/null && head -c 4 /dev/zero | wc -c").stdout.strip() == "4"
    mounts = sh(image, "cat /proc/mounts").stdout
    assert "tmpfs /dev tmpfs" in mounts and "devpts /dev/pts devpts" in mounts
    assert "shm /dev/shm tmpfs" in mounts and "mqueue /dev/mqueue mqueue" in mounts


def test_sys_is_read_only(image: pyrt.Image) -> None:
    r = sh(image, "grep ' /sys ' /proc/mounts; touch /sys/kernel/x 2>&1; echo rc=$?")
    assert r.stdout.startswith("sysfs /sys sysfs ro,")
    assert "rc=1" in r.stdout


CGROUP_LAYOUT = """
import subprocess, sys, pyrt
img = pyrt.Image.load(sys.argv[1])
ls = ["ls", "/sys/fs/cgroup"]
before = pyrt.run(img, ls, text=True).stdout.split()
subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=True)
after = pyrt.run(img, ls, text=True).stdout.split()
print("unified" in before, "unified" in after, len(before) - len(after))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.ismount("/sys/fs/cgroup/unified"),
    reason="a hybrid cgroup layout (its unified tree unmounted in a namespace of the test's)",
)
def test_sys_fs_cgroup_follows_the_hosts_layout(rootfs: Path) -> None:
    """A container's /sys/fs/cgroup has the host's hierarchies, which the starting process
    reads from its mount table again only when the kernel says it changed: one unmounted
    meanwhile (here in a mount namespace of the test's own) is gone from the next
    container's."""
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        CGROUP_LAYOUT, str(rootfs)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "False", "1"], r.stdout


#: Inside a container: for each hierarchy under /sys/fs/cgroup, its name, whether its
#: cgroup.procs lists the shell (pid 1, so the directory is the container's own cgroup), and
#: its mount options; then whether a write to the tmpfs and to a hierarchy failed.
CGROUP_VIEW = (
    "for d in /sys/fs/cgroup/*/; do n=$(basename $d); "
    "grep -qx 1 $d/cgroup.procs && s=own || s=other; "
    "echo $n $s $(grep \" /sys/fs/cgroup/$n \" /proc/self/mountinfo | cut -d' ' -f6); done; "
    "touch /sys/fs/cgroup/x 2>/dev/null; echo tmpfs-write=$?; "
    "mkdir /sys/fs/cgroup/pids/x 2>/dev/null; echo hierarchy-write=$?"
)


def host_hierarchies() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if " - cgroup" in line]
    return sorted(p.rsplit("/", 1)[1] for p in points
                  if p.startswith("/sys/fs/cgroup/") and p.count("/") == 4)  # fmt: skip


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/pids/"),
    reason="cgroup v1 hierarchies (the layout made ahead is for a v1 or hybrid host), as root",
)
def test_each_hierarchy_is_the_containers_own_cgroup_read_only(image: pyrt.Image) -> None:
    """Without limits (the container in its caller's cgroups: the layout the starting process
    made once and clones) and with them (its own cgroup: the layout made at its start), every
    host hierarchy is in the container's /sys/fs/cgroup, each is the container's own cgroup
    (its cgroup.procs lists pid 1), and all of it is read-only."""
    # (The layout is made at a process's second start of the kind: two runs without limits.)
    for opts in ({}, {}, {"memory": "64m"}):
        r = sh(image, CGROUP_VIEW, **opts)
        lines = r.stdout.splitlines()
        rows = [line.split() for line in lines[:-2]]
        assert [n for n, *_ in rows] == host_hierarchies(), (opts, r.stdout)
        for name, seen, options in rows:
            assert seen == "own", (opts, name, r.stdout)
            assert options.split(",")[:4] == ["ro", "nosuid", "nodev", "noexec"], (opts, name)
        assert lines[-2:] == ["tmpfs-write=1", "hierarchy-write=1"], (opts, r.stdout)


MOVED = """
import os, sys, pyrt
img = pyrt.Image.load(sys.argv[1])
here = open("/proc/self/cgroup").read().split("memory:")[1].split()[0]
parent = "/sys/fs/cgroup/memory" + here.rstrip("/")
new = parent + "/pyrt-moved-" + str(os.getpid())
see = ["cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/cgroup.procs"]
# (Three runs each time: the layout is made at the second, and cloned at the third.)
def runs():
    return [pyrt.run(img, see, text=True).stdout.split() for _ in range(3)]
print(runs())
os.mkdir(new)
try:
    open(new + "/memory.limit_in_bytes", "w").write(str(123 << 20))
    open(new + "/cgroup.procs", "w").write(str(os.getpid()))
    try:
        print(runs())
    finally:
        open(parent + "/cgroup.procs", "w").write(str(os.getpid()))
    print(runs())
finally:
    os.rmdir(new)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.isdir("/sys/fs/cgroup/memory/"),
    reason="the cgroup v1 memory hierarchy, and root to move a process in it",
)
def test_the_layout_follows_the_callers_cgroup(rootfs: Path) -> None:
    """The layout made once is made again when the starting process moves to another cgroup:
    a container started after the move sees the new cgroup (its limit) as its own, and after
    the move back the first one again."""
    r = subprocess.run([sys.executable, "-c", MOVED, str(rootfs)], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    first, moved, back = (eval(line) for line in r.stdout.splitlines())
    assert moved == [[str(123 << 20), "1"]] * 3, r.stdout
    assert first == back == [first[0]] * 3, r.stdout
    assert first[0][1:] == ["1"] and first[0][0] != moved[0][0], r.stdout


def test_read_only_bind_cannot_be_written(image: pyrt.Image, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data\n")
    r = sh(
        image,
        "cat /data/f; echo new > /data/f; echo rc=$?; touch /data/g; echo rc=$?",
        mounts=[pyrt.Bind(tmp_path, "/data", readonly=True)],
    )
    assert r.stdout.splitlines()[0] == "data"
    assert "rc=0" not in r.stdout
    assert "Read-only file system" in r.stderr
    assert (tmp_path / "f").read_text() == "data\n" and not (tmp_path / "g").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs below the bound directory (root)")
def test_read_only_bind_is_read_only_all_the_way_down(image: pyrt.Image, tmp_path: Path) -> None:
    """A mount below the bound directory (a tmpfs here; the host's /tmp under a bound /) is
    read-only too: "ro" alone left it writable, and a write reached the host."""
    sub = tmp_path / "sub"
    with small_tmpfs(sub, "size=1m"):
        r = sh(image, "touch /data/sub/x; echo rc=$?; grep ' /data/sub ' /proc/mounts",
               mounts=[pyrt.Bind(tmp_path, "/data", readonly=True)])  # fmt: skip
        assert "rc=1" in r.stdout and "Read-only file system" in r.stderr, (r.stdout, r.stderr)
        assert " ro," in r.stdout.splitlines()[1], r.stdout
        assert not (sub / "x").exists()
        # Writable, the same bind reaches the mount below, as it did.
        sh(image, "echo w > /data/sub/y", mounts=[pyrt.Bind(tmp_path, "/data")])
        assert (sub / "y").read_text() == "w\n"


def test_writable_bind_reaches_the_host(image: pyrt.Image, tmp_path: Path) -> None:
    sh(image, "echo from-container > /data/out", mounts=[pyrt.Bind(tmp_path, "/data")])
    assert (tmp_path / "out").read_text() == "from-container\n"


def test_bind_of_a_file_and_a_missing_target_inside_the_root(
    image: pyrt.Image, rootfs: Path, tmp_path: Path
) -> None:
    f = tmp_path / "conf"
    f.write_text("conf-data")
    r = sh(image, "cat /new/dir/conf", mounts=[pyrt.Bind(f, "/new/dir/conf", readonly=True)])
    assert r.stdout == "conf-data"
    # The missing target was created in the container's layer, never in the image.
    assert not (rootfs / "new").exists()


def test_bind_target_through_a_symlink_stays_inside(image: pyrt.Image, tmp_path: Path) -> None:
    # The image has /evil -> <a host directory>; a bind onto /evil must land on the container's
    # own /evil path resolved inside its root, never on the host directory.
    outside = tmp_path / "outside"
    outside.mkdir()
    link_img_root = tmp_path / "img"
    shutil.copytree(str(Path(image.lower[0])), link_img_root, symlinks=True)
    os.symlink(str(outside), link_img_root / "evil")
    img = pyrt.Image.load(link_img_root)
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("p")
    r = sh(img, "ls /evil", mounts=[pyrt.Bind(src, "/evil")])
    assert r.stdout.split() == ["payload"]
    assert os.listdir(outside) == []


def test_tmpfs_mount_with_size(image: pyrt.Image) -> None:
    r = sh(
        image,
        "grep ' /scratch ' /proc/mounts; head -c 2000000 /dev/zero > /scratch/f; echo rc=$?",
        mounts=[pyrt.Tmpfs("/scratch", size="1m")],
    )
    assert "tmpfs /scratch tmpfs rw,nosuid,nodev" in r.stdout
    assert "size=1024k" in r.stdout
    assert "rc=1" in r.stdout  # the size limit holds


def test_readonly_rootfs(image: pyrt.Image) -> None:
    r = sh(
        image,
        "touch /etc/x; echo rc=$?; touch /tmp/y; echo rc=$?; echo ok > /dev/null; echo rc=$?",
        readonly_rootfs=True,
    )
    assert r.stdout.split() == ["rc=1", "rc=1", "rc=0"]
    r = sh(image, "touch /scratch/y; echo rc=$?", readonly_rootfs=True,
           mounts=[pyrt.Tmpfs("/scratch")])  # fmt: skip
    assert r.stdout.strip() == "rc=0"


def test_env_workdir_user(image: pyrt.Image) -> None:
    r = sh(image, "echo $FOO $HOME; pwd; id -u; id -g; id -G", env={"FOO": "bar"},
           workdir="/tmp", user="app")  # fmt: skip
    assert r.stdout.splitlines() == ["bar /home/app", "/tmp", "1000", "1000", "1000 10 50"]
    r = sh(image, "id -u; id -g; echo $HOME", user="1234:77")
    assert r.stdout.split() == ["1234", "77", "/"]
    r = sh(image, "id -u; id -g; echo $HOME; echo $PATH")
    assert r.stdout.split()[:3] == ["0", "0", "/root"]
    assert r.stdout.split()[3] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_missing_workdir_is_created_inside_the_root(image: pyrt.Image, rootfs: Path) -> None:
    assert sh(image, "pwd", workdir="/new/work").stdout.strip() == "/new/work"
    assert not (rootfs / "new").exists()


def test_non_root_user_has_no_effective_capabilities(image: pyrt.Image) -> None:
    r = sh(image, "grep -E '^Cap(Eff|Prm)' /proc/self/status", user="app")
    assert r.stdout.split() == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000"]


def test_host_image_is_read_only_with_its_own_tmp(image: pyrt.Image) -> None:
    host = pyrt.Image.host()
    r = pyrt.run(host, ["sh", "-c", "touch /usr/x; echo rc=$?; touch /tmp/y; echo rc=$?; ls /tmp"],
                 text=True)  # fmt: skip
    assert r.stdout.split() == ["rc=1", "rc=0", "y"]
    assert not Path("/usr/x").exists() and not Path("/tmp/y").exists()


@pytest.mark.parametrize("umask_check", ["022"])
def test_default_umask(image: pyrt.Image, umask_check: str) -> None:
    assert sh(image, "umask").stdout.strip() == "0" + umask_check


def test_sigpipe_is_default_inside(image: pyrt.Image) -> None:
    # Python ignores SIGPIPE; the container's processes must not inherit that.
    r = pyrt.run(image, ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], text=True)
    assert r.stdout.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]


def test_execs_start_with_every_signal_default_whatever_the_caller_ignores(
    image: pyrt.Image,
) -> None:
    """The exec server resets its own dispositions once and its forks only SIGPIPE's: a signal
    the caller ignored (inherited by the server, as by any child) must not reach an exec."""
    sigs = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM)
    before = [signal.signal(s, signal.SIG_IGN) for s in sigs]
    try:
        with pyrt.Container(image, ["sleep", "60"]) as c:
            for _ in range(3):  # (the first may go before the server is up; the others not)
                r = c.exec(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], text=True)
                assert r.stdout.split() == ["SigBlk:", "0000000000000000",
                                            "SigIgn:", "0000000000000000"]  # fmt: skip
            r = c.exec(["grep", "-E", "^Sig(Ign|Blk)", "/proc/1/status"], text=True)
            assert r.stdout.split()[3] == "0000000000000000", r.stdout
    finally:
        for s, h in zip(sigs, before):
            signal.signal(s, h)
