"""`pyrt run` and friends, as a user types them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pyrt


def pyrt_cli(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrt.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_prints_and_exits_with_the_status(rootfs: Path) -> None:
    r = pyrt_cli("run", "--rm", str(rootfs), "sh", "-c", "echo hi; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "hi\n", "err\n")


def test_run_on_the_host_image() -> None:
    r = pyrt_cli("run", "host", "sh", "-c", "echo $$; hostname")
    assert r.returncode == 0 and r.stdout.split()[0] == "1"


def test_flags(rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("vol\n")
    tmp_path.chmod(0o755)  # readable by the container's non-root user
    r = pyrt_cli(
        "run", "-e", "A=1", "-v", f"{tmp_path}:/v:ro", "--tmpfs", "/scratch", "-w", "/scratch",
        "-u", "app", "--hostname", "h1", "--read-only", "--cap-drop", "ALL", str(rootfs),
        "sh", "-c", "echo $A; cat /v/f; pwd; id -u; hostname; touch /x 2>/dev/null || echo ro;"
        "grep CapBnd /proc/self/status",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "vol", "/scratch", "1000", "h1", "ro", "CapBnd:",
                                "0000000000000000"]  # fmt: skip


def test_tmpfs_takes_dockers_options(rootfs: Path) -> None:
    """`--tmpfs DST:size=N,mode=M` as Docker writes it: a bounded tmpfs with that mode (not a
    directory named "DST:size=..."); an option it does not know is refused by name."""
    r = pyrt_cli(
        "run", "--tmpfs", "/x:size=1m,mode=700", str(rootfs), "sh", "-c",
        "stat -c %a /x; grep ' /x ' /proc/mounts; ls -d '/x:size=1m,mode=700' 2>&1 || true",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "700" and "size=1024k" in lines[1], lines
    assert "No such file or directory" in lines[2]
    r = pyrt_cli("run", "--tmpfs", "/x:noexec", str(rootfs), "true")
    assert r.returncode == 125 and "unknown option 'noexec'" in r.stderr
    r = pyrt_cli("run", "--tmpfs", "/x:size=lots", str(rootfs), "true")
    assert r.returncode == 125 and "not a size: 'lots'" in r.stderr


def test_interactive_stdin(rootfs: Path) -> None:
    r = pyrt_cli("run", "-i", str(rootfs), "cat", input="typed\n")
    assert r.stdout == "typed\n"


def test_killed_container_exits_128_plus_signal(rootfs: Path) -> None:
    r = pyrt_cli("run", str(rootfs), "sh", "-c", "sh -c 'kill -9 $$'; exit $?")
    assert r.returncode == 137


def test_errors_are_one_line_with_docker_exit_codes(rootfs: Path) -> None:
    r = pyrt_cli("run", str(rootfs), "/bin/nope")
    assert r.returncode == 127
    assert r.stderr == "pyrt: executable file not found: /bin/nope (stage exec)\n"
    r = pyrt_cli("run", "/no/such/image", "true")
    assert r.returncode == 125 and "Traceback" not in r.stderr and "/no/such/image" in r.stderr
    r = pyrt_cli("run", "--memory", "1k", str(rootfs), "true")
    assert r.returncode == 125 and "memory" in r.stderr and "6 MiB" in r.stderr


def test_limits_on_the_command_line(rootfs: Path) -> None:
    r = pyrt_cli("run", "--memory", "32m", "--pids-limit", "5", "--cpus", "0.5", str(rootfs),
                 "tail", "-c", "100000000", "/dev/zero")  # fmt: skip
    assert r.returncode == 137


def test_load_tag_images_rmi(rootfs: Path) -> None:
    r = pyrt_cli("load", str(rootfs), "--tag", "bb-cli:1")
    assert r.returncode == 0 and r.stdout.startswith("sha256:")
    try:
        assert "bb-cli:1" in pyrt_cli("images").stdout
        r = pyrt_cli("run", "bb-cli:1", "cat", "/etc/marker")
        assert r.stdout == "busybox-image\n"
        assert pyrt.Image.get("bb-cli:1").tags == ["bb-cli:1"]
    finally:
        assert pyrt_cli("rmi", "bb-cli:1").returncode == 0
    assert "bb-cli:1" not in pyrt_cli("images").stdout


def test_plan_shows_the_steps(rootfs: Path) -> None:
    r = pyrt_cli("plan", str(rootfs), "true")
    assert r.returncode == 0 and '"pivot' not in r.stdout and '"mounts"' in r.stdout


def test_cp_commit_save_of_a_detached_container(rootfs: Path, tmp_path: Path) -> None:
    r = pyrt_cli("run", "-d", str(rootfs), "sh", "-c", "echo made > /made; sleep 60")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.split()[-1]
    try:
        (tmp_path / "in.txt").write_text("in\n")
        assert pyrt_cli("cp", str(tmp_path / "in.txt"), f"{cid}:/etc/in.txt").returncode == 0
        out = pyrt_cli("exec", cid, "cat", "/etc/in.txt")
        assert out.stdout == "in\n"
        r = pyrt_cli("cp", f"{cid}:/etc/in.txt", str(tmp_path / "back.txt"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "back.txt").read_text() == "in\n"
        os.mkfifo(tmp_path / "fifo")  # not replaced by a copy (nor a device node: /dev/null)
        r = pyrt_cli("cp", f"{cid}:/etc/in.txt", str(tmp_path / "fifo"))
        assert r.returncode != 0 and "does not replace" in r.stderr, r.stderr
        assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode)
        r = pyrt_cli("cp", str(tmp_path), str(tmp_path))
        assert r.returncode == 125 and "exactly one" in r.stderr
        r = pyrt_cli("commit", cid, "pyrt-test/cli-commit:1")
        assert r.returncode == 0, r.stderr
        img = pyrt.Image.get("pyrt-test/cli-commit:1")
        assert img.id == r.stdout.strip()
        seen = pyrt.run(img, ["cat", "/etc/in.txt", "/made"], text=True)
        assert seen.stdout == "in\nmade\n"
        r = pyrt_cli("save", "pyrt-test/cli-commit:1", str(tmp_path / "img.tar"),
                     "--format", "oci-archive")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert pyrt.run(pyrt.Image.load(tmp_path / "img.tar"), ["cat", "/made"]).stdout == b"made\n"
        img.remove()
    finally:
        pyrt_cli("rm", cid)


def test_user_mistakes_are_one_line(rootfs: Path) -> None:
    r = pyrt_cli("run", "-m", "lots", str(rootfs), "true")
    assert r.returncode == 125 and "memory" in r.stderr and "Traceback" not in r.stderr
    r = pyrt_cli("run", "./no/such/rootfs", "true")
    assert r.returncode == 125 and "no such file or directory" in r.stderr
    assert "-d, --detach" in pyrt_cli("run", "--help").stdout


def test_gc_removes_what_an_interrupted_load_left(tmp_path: Path) -> None:
    from pyrt.image import store

    stale = store.tmp_dir() / "layer-killed"
    (stale / "root" / "d").mkdir(parents=True)
    (stale / "root" / "d" / "f").write_bytes(b"x" * 1000)
    (store.tmp_dir() / "blob-killed").write_bytes(b"partial")
    r = pyrt_cli("gc")
    assert r.returncode == 0, r.stderr
    assert "tmp/layer-killed" in r.stdout and "tmp/blob-killed" in r.stdout
    assert not stale.exists() and not (store.tmp_dir() / "blob-killed").exists()


def test_exec_as_a_user_gets_its_groups_home_and_the_containers_umask(rootfs: Path) -> None:
    """`pyrt exec -u` builds its process as Container.exec does: a name resolves against the
    container's own /etc files (as they are now), with its additional groups and HOME, and
    the umask and limits stay the container's."""
    r = pyrt_cli("run", "-d", str(rootfs), "sh", "-c", "sleep 60")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.split()[-1]
    try:
        probe = "id -u; id -g; id -G; echo $HOME; umask; grep CapEff /proc/self/status"
        out = pyrt_cli("exec", "-u", "app", cid, "sh", "-c", probe)
        assert out.returncode == 0, out.stderr
        uid, gid, groups, home, umask, capeff = out.stdout.splitlines()
        assert (uid, gid, home, umask) == ("1000", "1000", "/home/app", "0022")
        assert set(groups.split()) == {"1000", "50", "10"}
        assert capeff.split()[1] == "0000000000000000"
        # A user added to the running container is found: its files, not the image's.
        add = "echo late:x:1500:50::/l:/bin/sh >> /etc/passwd"
        assert pyrt_cli("exec", cid, "sh", "-c", add).returncode == 0
        late = pyrt_cli("exec", "-u", "late", cid, "sh", "-c", "id -u; id -g; echo $HOME")
        assert late.stdout.split() == ["1500", "50", "/l"], late.stderr
        ghost = pyrt_cli("exec", "-u", "ghost", cid, "true")
        assert ghost.returncode == 125 and "ghost" in ghost.stderr
        as_root = pyrt_cli(
            "exec", "-u", "0:0", cid, "sh", "-c", "id -u; grep CapEff /proc/self/status"
        )
        assert as_root.stdout.split()[0] == "0" and as_root.stdout.split()[-1] != "0000000000000000"
    finally:
        pyrt_cli("rm", cid)


def test_ps_passes_over_a_state_file_that_is_not_a_containers() -> None:
    """A damaged state.json (no id) is passed over like a half-made one: `pyrt ps` and a named
    start still work."""
    import fcntl
    import shutil

    from pyrt.host.state import containers_root

    d = containers_root() / ("f" * 32)
    d.mkdir()
    try:
        (d / "state.json").write_text('{"name": "damaged", "status": "running"}')
        fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held: its owner looks alive
        try:
            r = pyrt_cli("ps")
            assert r.returncode == 0 and "damaged" not in r.stdout, r.stderr
            with pyrt.Container(pyrt.Image.host(), ["true"], name="damaged") as c:
                assert c.wait(timeout=30) == 0
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(d)
