"""State: files in and out, commit, save, reset. Effects are checked from inside the container
(what its processes see) and on the host (what must and must not be there)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

import pyrt

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="as root (rootless: test_rootless.py)")


def sh(c: pyrt.Container, script: str) -> str:
    r = c.exec(["sh", "-c", script], text=True)
    assert r.returncode == 0, r
    assert isinstance(r.stdout, str)
    return r.stdout


# --- files in and out ------------------------------------------------------------------------


def test_write_file_before_start_is_there_when_the_command_runs(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "cat /etc/app.conf; stat -c '%u:%g %a' /etc/app.conf"])
    try:
        c.write_file("/etc/app.conf", "x=1\n", mode=0o640)
        c.write_file(Path("/new/dir/f"), b"\x00\xff")
        assert c.read_file("/etc/app.conf") == b"x=1\n"
        res = c.run(text=True)
    finally:
        c.remove()
    assert res.stdout == "x=1\n0:0 640\n"


def test_files_while_running_and_after_exit(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "echo made > /made; sleep 60"])
    try:
        c.start()
        c.wait_for_file("/made")
        assert c.read_file("/made") == b"made\n"
        c.write_file("/tmp/live", "live")
        assert sh(c, "cat /tmp/live") == "live"
        c.kill()
        c.wait()
        assert c.status == "exited"
        # The root is still readable and writable after the container exited.
        assert c.read_file("/made") == b"made\n"
        c.write_file("/later", "x")
        assert c.read_file("/later") == b"x"
        with pytest.raises(pyrt.PathNotFound, match="/nope"):
            c.read_file("/nope")
    finally:
        c.remove()
    with pytest.raises(pyrt.PyrtError, match="removed"):
        c.read_file("/made")


def test_the_root_layer_is_mounted_volatile_and_opens_again(image: pyrt.Image) -> None:
    # The overlay root is volatile (no writeback of the layer's filesystem at each removal),
    # which leaves overlayfs's mark in the work directory: overlayfs refuses the layer a second
    # mount while it is there. A start on a marked layer (pyrt-runc starting a bundle again)
    # and pyrt's view of a stopped container clear it and mount.
    c = pyrt.Container(image, ["sh", "-c", "grep ' / / ' /proc/self/mountinfo; cat /in"])
    try:
        c.write_file("/in", "prepared\n")
        assert c._dir is not None
        work, path = c._dir.work, c._dir.path
        mark = work / "work" / "incompat" / "volatile"
        mark.mkdir(parents=True)
        (mark / "dirty").touch()
        c.start()
        assert c.wait() == 0, c.logs()
        root, content = c.logs().decode().splitlines()
        fstype, _, options = root.split(" - ")[1].split(" ")
        # ("fsync=volatile" since Linux 6.6.)
        assert fstype == "overlay", root
        assert {"volatile", "fsync=volatile"} & set(options.split(",")), root
        assert content == "prepared"
        assert (mark / "dirty").exists(), "this mount's own mark"
        assert c.read_file("/in") == b"prepared\n"
        c.write_file("/after", "x")
        assert c.read_file("/after") == b"x"
    finally:
        c.remove()
    assert not path.exists()


def test_fifos_and_device_nodes_are_refused_unopened(image: pyrt.Image) -> None:
    """What the container put at a path is looked at before the host opens it: a FIFO's open
    would block (or wake the container's peer on the other end), a device node's would act on
    the host's device. Both are refused, naming the path, and neither is opened: the
    container's writer, waiting on its FIFO for a reader, is still waiting."""
    with pyrt.Container(image, ["sleep", "1000"], cap_add=["MKNOD"]) as c:
        sh(c, "mkfifo /etc/fifo /etc/quiet; mknod /etc/zero c 1 5")
        # A writer inside, blocked in its open until a reader comes (then it says so).
        sh(c, "(echo hi > /etc/fifo; touch /etc/woken) </dev/null >/dev/null 2>&1 &")
        for path in ("/etc/fifo", "/etc/zero"):
            with pytest.raises(pyrt.PyrtError, match=f"{path}: not a regular file"):
                c.read_file(path)
        time.sleep(0.2)
        assert sh(c, "ls /etc/woken 2>&1 || true").strip().endswith("No such file or directory")
        for path in ("/etc/quiet", "/etc/zero"):  # (a FIFO without a reader would block)
            with pytest.raises(pyrt.PyrtError, match=f"{path}: not a regular file"):
                c.write_file(path, b"x")
        # get_archive takes them as what they are, without opening them.
        with tarfile.open(fileobj=io.BytesIO(c.get_archive("/etc")), mode="r:") as tf:
            kinds = {m.name: m.type for m in tf.getmembers()}
        assert kinds["etc/fifo"] == tarfile.FIFOTYPE
        assert kinds["etc/zero"] == tarfile.CHRTYPE
        sh(c, "cat /etc/fifo >/dev/null")  # the writer finishes: it was waiting all along
        for _ in range(100):
            if c.exec(["test", "-e", "/etc/woken"]).returncode == 0:
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the container's writer never finished")


def test_what_the_kernel_refuses_is_a_pyrt_error_naming_the_path(image: pyrt.Image) -> None:
    """A symlink loop, /proc's links (which lead out of the root), /proc/kmsg (which waits for
    messages: opened blocking, the read would never end), /proc/1/mem (EIO) and a directory
    /proc cannot hold came out as bare OSErrors. Each is a PyrtError naming the path asked
    for, running or exited, and nothing waits."""
    running = {
        "/proc/kmsg": "waits for data",
        "/proc/1/mem": "Input/output error",
        "/proc/1/root/etc/passwd": "symbolic links",
    }
    with pyrt.Container(image, ["sleep", "1000"]) as c:
        sh(c, "ln -s loop /loop")
        for path, why in running.items():
            with pytest.raises(pyrt.PyrtError, match=f"{path}: .*{why}"):
                c.read_file(path)
        with pytest.raises(pyrt.PyrtError, match="/proc/x/y: No such file or directory"):
            c.write_file("/proc/x/y", "x")
        for state in ("running", "exited"):
            if state == "exited":
                c.kill()
                c.wait(timeout=30)
            with pytest.raises(pyrt.PyrtError, match=r"/loop: .*symbolic links"):
                c.read_file("/loop")
            with pytest.raises(pyrt.PyrtError, match=r"/loop/y: .*symbolic links"):
                c.write_file("/loop/y", "x")
            with pytest.raises(pyrt.PyrtError, match=r"/loop/z: .*symbolic links"):
                c.copy_in(__file__, "/loop/z")


def test_reading_out_more_than_the_bound_is_refused(
    image: pyrt.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_file and get_archive hold what they read in the caller's memory: past the bound
    (4 GiB, here lowered to 1 MiB) each is a PyrtError naming the path and copy_out, which
    writes to disk instead. A sparse file of the container's reads as its whole size; before,
    get_archive of one had no bound at all."""
    from pyrt.rootfs import files

    monkeypatch.setattr(files, "MAX_READ", 1 << 20)
    with pyrt.Container(image, ["sleep", "1000"]) as c:
        sh(c, "dd if=/dev/zero of=/big bs=1024 count=0 seek=5120 2>/dev/null; mkdir /tree; "
              "cp /big /tree/")  # fmt: skip
        for state in ("running", "exited"):
            if state == "exited":
                c.kill()
                c.wait(timeout=30)
            with pytest.raises(pyrt.PyrtError, match="/big: larger than 1 MiB; use copy_out"):
                c.read_file("/big")
            for path in ("/big", "/tree"):
                with pytest.raises(pyrt.PyrtError, match=f"{path}: .* larger than 1 MiB; use "):
                    c.get_archive(path)
            small = c.get_archive("/etc")
            with tarfile.open(fileobj=io.BytesIO(small), mode="r:") as tf:
                assert "etc/passwd" in tf.getnames()


def test_a_tree_nested_deeper_than_python_recurses(image: pyrt.Image, tmp_path: Path) -> None:
    """A container that nests directories 1200 deep once made get_archive, copy_out and
    commit a RecursionError, and, worse, left its writable layer in the trash that every later
    container start empties first: each then failed with a RecursionError too. Now the
    copies are a PyrtError naming the depth (copy_out leaves nothing at its destination),
    and the tree is deleted with the container."""
    from helpers import assert_nothing_left_of

    c = pyrt.Container(image, ["sleep", "600"]).start()
    try:
        sh(c, "mkdir /deep && cd /deep && i=0; while [ $i -lt 1200 ]; do mkdir a && cd a; "
              "i=$((i+1)); done")  # fmt: skip
        for call in (
            lambda: c.get_archive("/deep"),
            lambda: c.copy_out("/deep", tmp_path / "out"),
            lambda: c.commit(),
        ):
            with pytest.raises(pyrt.PyrtError, match="more than 400 directories deep"):
                call()
        assert not (tmp_path / "out").exists()
        # A file copied in over the tree replaces it (its removal was a RecursionError).
        (tmp_path / "deep").write_bytes(b"flat\n")
        c.copy_in(tmp_path / "deep", "/")
        assert c.read_file("/deep") == b"flat\n"
    finally:
        c.remove()
    assert_nothing_left_of(c.id)
    assert pyrt.run(image, ["true"]).returncode == 0  # the next start is not held up by it
    host = tmp_path / "host"
    (host / "/".join(["d"] * 450)).mkdir(parents=True)
    with pyrt.Container(image, ["sleep", "600"]) as c:
        with pytest.raises(pyrt.PyrtError, match="more than 400 directories deep"):
            c.copy_in(host, "/in")


def test_bad_arguments_are_refused(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["true"])
    try:
        with pytest.raises(TypeError, match="data"):
            c.write_file("/x", 12)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="absolute"):
            c.write_file("relative", b"")
        with pytest.raises(ValueError, match="NUL"):
            c.read_file("/a\0b")
        with pytest.raises(pyrt.PyrtError, match="does not exist"):
            c.copy_in("/no/such/host/path", "/x")
        with pytest.raises(pyrt.PyrtError, match="cannot write in /proc"):
            c.copy_out("/etc/passwd", "/proc")  # (where no staging directory can be made)
        with pytest.raises(TypeError, match="data"):
            c.put_archive("/x", 3.0)  # type: ignore[arg-type]
    finally:
        c.remove()


def test_symlinks_never_lead_out_of_the_root(image: pyrt.Image, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("host\n")
    with pyrt.Container(image, ["sleep", "60"]) as c:
        sh(c, f"ln -s / /esc; ln -s ../../../../../{tmp_path} /rel; ln -s /etc/passwd /pw")
        # Writes through the links land inside the container's root...
        c.write_file(f"/esc{victim}", "container\n")
        c.write_file("/rel/victim", "container too\n")
        assert sh(c, f"cat {victim}") == "container too\n"
        # ... reads too: /pw is the container's /etc/passwd, not the host's.
        assert c.read_file("/pw") == sh(c, "cat /etc/passwd").encode()
        assert c.read_file("/../../../etc/passwd") == c.read_file("/etc/passwd")
    assert victim.read_text() == "host\n"


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti, data in members:
            ti.size = len(data) if ti.isreg() else 0
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def test_put_archive_is_extracted_safely(image: pyrt.Image, tmp_path: Path) -> None:
    link = tarfile.TarInfo("out")
    link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
    through = tarfile.TarInfo("out/planted")
    climb = tarfile.TarInfo("../../../../../../" + str(tmp_path / "climbed").lstrip("/"))
    ok = tarfile.TarInfo("sub/ok")
    ok.uid, ok.gid, ok.mode = 1234, 5678, 0o600
    with pyrt.Container(image, ["sleep", "60"]) as c:
        c.put_archive("/data", _tar((link, b""), (through, b"p"), (ok, b"fine")))
        with pytest.raises(pyrt.UnsafeImageError, match="climbs out"):
            c.put_archive("/data", _tar((climb, b"x")))
        # A file object works as well as bytes.
        c.put_archive("/data2", io.BytesIO(_tar((ok, b"again"))))
        assert sh(c, "stat -c '%u:%g %a' /data/sub/ok; cat /data2/sub/ok") == "1234:5678 600\nagain"
        got = c.get_archive("/data/sub")
    assert not (tmp_path / "planted").exists() and not (tmp_path / "climbed").exists()
    with tarfile.open(fileobj=io.BytesIO(got)) as tf:
        names = {m.name: m for m in tf.getmembers()}
        assert set(names) == {"sub", "sub/ok"}
        f = tf.extractfile(names["sub/ok"])
        assert f is not None and f.read() == b"fine"


def test_copy_in_a_tree_with_links(image: pyrt.Image, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a").write_text("A")
    os.link(src / "sub" / "a", src / "hard")
    os.symlink("sub/a", src / "soft")
    os.chown(src / "sub" / "a", 4321, 4321)
    with pyrt.Container(image, ["sleep", "60"]) as c:
        c.copy_in(src, "/opt")  # /opt is missing: the tree becomes /opt
        c.copy_in(src / "sub" / "a", "/etc")  # an existing directory: copied into it
        out = sh(c, "cat /opt/sub/a /etc/a; echo; readlink /opt/soft; "
                    "stat -c '%i %u' /opt/hard /opt/sub/a")  # fmt: skip
    lines = out.split("\n")
    assert lines[0] == "AA"
    assert lines[1] == "sub/a"
    (ino1, uid1), (ino2, uid2) = (x.split() for x in lines[2:4])
    assert ino1 == ino2, "the hard link stays one file"
    assert uid1 == uid2 == "0", "what is copied in belongs to the container's root"


def test_copy_out_skips_devices_and_sockets_and_clears_setuid(
    image: pyrt.Image, tmp_path: Path
) -> None:
    dev = tarfile.TarInfo("null2")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    with pyrt.Container(image, ["sleep", "60"]) as c:
        sh(c, "mkdir -p /out/d; echo hi > /out/d/f; ln /out/d/f /out/hard; ln -s /etc /out/etc")
        c.put_archive("/out", _tar((dev, b"")))
        c.write_file("/out/suid", b"#!/bin/sh\n", mode=0o4755)
        assert c.pid is not None
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"/proc/{c.pid}/root/out/sock")
        s.close()
        with pytest.warns(UserWarning, match="left out"):
            skipped = c.copy_out("/out", tmp_path)
        c.copy_out("/out/d/f", tmp_path / "renamed")
    out = tmp_path / "out"
    assert sorted(skipped) == ["out/null2 (a device node)", "out/sock (a socket)"]
    assert not (out / "null2").exists() and not (out / "sock").exists()
    assert (out / "d" / "f").read_text() == "hi\n"
    assert os.stat(out / "hard").st_ino == os.stat(out / "d" / "f").st_ino
    assert os.readlink(out / "etc") == "/etc"
    assert stat.S_IMODE(os.stat(out / "suid").st_mode) == 0o755
    assert (tmp_path / "renamed").read_text() == "hi\n"


def test_copy_out_does_not_replace_a_device_fifo_or_socket(
    image: pyrt.Image, tmp_path: Path
) -> None:
    """A copy (or a saved archive) to /dev/null turned the host's into a regular file: a
    destination that is a device node, a FIFO or a socket is refused and left as it is (one in
    a directory given as the destination too). A regular file is replaced, as docker cp does."""
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of the test's own
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "sock"))
    s.close()
    (tmp_path / "plain").write_text("old\n")
    with pyrt.Container(image, ["sleep", "60"]) as c:
        sh(c, "echo new > /plain; cp /plain /null; cp /plain /fifo")
        for dest in (null, fifo, tmp_path / "sock"):
            with pytest.raises(pyrt.PyrtError, match=f"{dest}.* which pyrt does not replace"):
                c.copy_out("/plain", dest)
        with pytest.raises(pyrt.PyrtError, match="device node"):
            c.copy_out("/null", tmp_path)  # into the directory: its "null" is in the way
        c.copy_out("/plain", tmp_path / "plain")
    for fmt in ("oci-archive", "docker-archive"):  # nor does a saved archive
        for dest in (null, fifo):
            with pytest.raises(pyrt.PyrtError, match=f"save: {dest}.* which pyrt does not replace"):
                image.save(dest, format=fmt)
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert stat.S_ISSOCK(os.lstat(tmp_path / "sock").st_mode)
    assert (tmp_path / "plain").read_text() == "new\n"


@pytest.mark.parametrize("kind", ["device node", "FIFO", "directory"])
def test_copy_out_into_a_tree_spares_what_a_file_must_not_replace(
    image: pyrt.Image, tmp_path: Path, kind: str
) -> None:
    """A tree copied into an existing host directory merges there: a regular file or a symlink
    in an entry's way is replaced, as docker cp does. Deeper in the tree, a device node or a
    FIFO was replaced by a regular file, and a directory deleted with the host's files in it;
    they are refused and left as they are, whatever their depth."""
    sub = tmp_path / "data" / "sub"
    sub.mkdir(parents=True)
    if kind == "device node":
        os.mknod(sub / "x", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "FIFO":
        os.mkfifo(sub / "x")
    else:
        (sub / "x").mkdir()
        (sub / "x" / "keep").write_text("the host's\n")
    (sub / "old").write_text("old\n")
    os.symlink("/etc/hostname", sub / "link")
    hostname = Path("/etc/hostname").read_bytes()
    before = os.lstat(sub / "x")
    with pyrt.Container(image, ["sleep", "60"]) as c:
        sh(c, "mkdir -p /data/sub && cd /data/sub && echo new > x && echo new > old && "
              "echo new > link")  # fmt: skip
        c.copy_out("/data/sub/old", sub)  # a regular file in the way is replaced
        c.copy_out("/data/sub/link", sub)  # and a symlink, not followed
        with pytest.raises(pyrt.PyrtError, match=f"{tmp_path}: .*data/sub/x.*{kind}"):
            c.copy_out("/data", tmp_path)
    after = os.lstat(sub / "x")
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode, before.st_ino, before.st_rdev)  # fmt: skip
    if kind == "directory":
        assert (sub / "x" / "keep").read_text() == "the host's\n"
    assert (sub / "old").read_text() == "new\n"
    assert not os.path.islink(sub / "link") and (sub / "link").read_text() == "new\n"
    assert Path("/etc/hostname").read_bytes() == hostname


def test_host_image_container_files(tmp_path: Path) -> None:
    c = pyrt.Container(pyrt.Image.host(), ["sleep", "60"])
    try:
        with pytest.raises(pyrt.PyrtError, match="read-only"):
            c.write_file("/etc/x", "x")
        assert c.read_file("/etc/hostname") == Path("/etc/hostname").read_bytes()
        c.start()
        c.write_file("/tmp/inside", "private")
        assert sh(c, "cat /tmp/inside") == "private"
    finally:
        c.remove()
    assert not Path("/tmp/inside").exists()


# --- commit and save ------------------------------------------------------------------------


CHANGES = (
    "echo new > /new; rm /etc/group; rm -rf /usr; mkdir -p /usr/only; echo u > /usr/only/x; "
    "echo ready > /ready; sleep 60"
)


def test_commit_a_running_container(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", CHANGES], env={"FROM": "container"}) as c:
        c.wait_for_file("/ready")
        img = c.commit(tag="pyrt-test/commit:1", command=["sh", "-c", "echo $FROM $MORE"],
                       env={"MORE": "more"}, workdir="/usr", user="0:0")  # fmt: skip
        assert c.status == "running", "a commit freezes and thaws the container"
        assert sh(c, "echo still") == "still\n"
    try:
        assert img.id.startswith("sha256:")
        assert pyrt.Image.get("pyrt-test/commit:1").id == img.id
        res = pyrt.run(img, text=True)
        assert res.stdout == "container more\n"
        seen = pyrt.run(img, ["sh", "-c", "cat /new; ls /etc/group; ls /usr; pwd"], text=True)
        assert seen.stdout == "new\nonly\n/usr\n"
        assert "No such file" in str(seen.stderr), "the deletion is a whiteout"
        # A committed image is a base for another commit.
        with pyrt.Container(img, ["sh", "-c", "rm /new; echo two > /two"]) as c2:
            c2.wait()
            img2 = c2.commit()
        assert pyrt.run(img2, ["sh", "-c", "ls /new; cat /two"], text=True).stdout == "two\n"
    finally:
        img.remove()


def test_commit_of_a_container_that_was_never_started(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["true"])
    try:
        c.write_file("/prepared", "p")
        img = c.commit()
    finally:
        c.remove()
    assert pyrt.run(img, ["cat", "/prepared"]).stdout == b"p"


def test_a_removed_image_is_refused_by_name(image: pyrt.Image) -> None:
    """After `Image.remove()`, its layers that no container has mounted are deleted; a new
    container of the removed image object is then an ImageNotFound naming what is gone (was:
    an ENOENT from the overlay's mount, "mounting the overlay root ... No such file")."""
    with pyrt.Container(image, ["sh", "-c", "echo made > /made; sleep 600"]) as c:
        c.wait_for_file("/made")
        img = c.commit(tag="localhost/pyrt-removed:1")
    assert pyrt.run(img, ["cat", "/made"]).stdout == b"made\n"
    img.remove()
    with pytest.raises(pyrt.ImageNotFound, match="are gone"):
        pyrt.Container(img, ["true"])
    with pytest.raises(pyrt.ImageNotFound, match="are gone"):
        pyrt.run(img, ["true"])
    with pytest.raises(pyrt.ImageNotFound):
        pyrt.Image.get("localhost/pyrt-removed:1")


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes().hex()[:64]
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def committed(image: pyrt.Image) -> pyrt.Image:
    with pyrt.Container(image, ["sh", "-c", CHANGES]) as c:
        c.wait_for_file("/ready")
        return c.commit(tag="localhost/pyrt-save:1", command=["cat", "/new"])


def test_save_oci_read_by_skopeo_and_umoci(committed: pyrt.Image, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    committed.save(layout, format="oci")
    r = subprocess.run(["skopeo", "inspect", f"oci:{layout}:1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["Layers"]) == 2
    bundle = tmp_path / "bundle"
    r = subprocess.run(["umoci", "unpack", "--image", f"{layout}:1", str(bundle)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    # What umoci unpacks is what a container of the image sees.
    with pyrt.Container(committed, ["sleep", "60"]) as c:
        seen = c.get_archive("/")
    view = tmp_path / "view"
    view.mkdir()
    with tarfile.open(fileobj=io.BytesIO(seen)) as tf:
        tf.extractall(view, filter="fully_trusted")
    skip = {"proc", "sys", "dev", "tmp", "etc/hostname", "etc/hosts", "etc/resolv.conf"}

    def keep(t: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in t.items() if k.split("/")[0] not in skip and k not in skip}

    assert keep(_tree(bundle / "rootfs")) == keep(_tree(view / "."))
    assert "usr/only/x" in _tree(bundle / "rootfs") and "etc/group" not in _tree(bundle / "rootfs")


def test_save_archives_load_back_and_in_podman(committed: pyrt.Image, tmp_path: Path) -> None:
    for fmt in ("oci-archive", "docker-archive"):
        path = tmp_path / f"img.{fmt}"
        committed.save(str(path), format=fmt)
        r = subprocess.run(["skopeo", "inspect", f"{fmt}:{path}"], capture_output=True, text=True)
        assert r.returncode == 0, (fmt, r.stderr)
        back = pyrt.Image.load(path)
        assert pyrt.run(back).stdout == b"new\n"
    assert shutil.which("podman")
    from ocitools import _pyrt_runc

    r = subprocess.run(["podman", "load", "-i", str(tmp_path / "img.docker-archive")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        r = subprocess.run(
            ["podman", "--runtime", _pyrt_runc(), "run", "--rm", "--ulimit", "nofile=1024:1024",
             "--ulimit", "nproc=1024:1024", "localhost/pyrt-save:1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0 and r.stdout == "new\n", r.stderr
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/pyrt-save:1"], capture_output=True)
    with pytest.raises(ValueError, match="format"):
        committed.save(tmp_path / "x", format="zip")


# --- reset ----------------------------------------------------------------------------------


def test_reset_restores_the_image_and_keeps_identity(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "echo started >> /starts; sleep 60"], name="resettable")
    try:
        c.write_file("/before-start", "x")
        c.start()
        c.wait_for_file("/starts")
        sh(c, "echo dirty > /dirty; rm /etc/passwd; sleep 30 >/dev/null 2>&1 & echo $! > /bg")
        cid, pid = c.id, c.pid
        assert c.reset() is c
        assert (c.id, c.name, c.status) == (cid, "resettable", "running")
        assert c.pid != pid
        c.wait_for_file("/starts")
        assert sh(c, "cat /starts; ls / | grep -c -e dirty -e before-start -e bg; "
                     "test -f /etc/passwd && echo passwd; ps -o comm | grep -c sleep"
                  ) == "started\n0\npasswd\n1\n"  # fmt: skip
    finally:
        c.remove()


def test_reset_keeps_published_ports(image: pyrt.Image, tmp_path: Path) -> None:
    with pyrt.Container(image, ["sh", "-c", "echo hello > /tmp/i; httpd -f -p 8080 -h /tmp"],
                        ports={8080: None}) as c:  # fmt: skip
        port = c.port(8080)
        c.wait_for_port(8080)
        c.write_file("/tmp/i", "changed\n")
        c.reset()
        assert c.port(8080) == port
        c.wait_for_port(8080)
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/i", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert body == b"hello\n"


def test_the_async_front_end(image: pyrt.Image, tmp_path: Path) -> None:
    import asyncio

    async def scenario() -> tuple[bytes, bytes, bytes]:
        async with pyrt.aio.Container(image, ["sh", "-c", "echo x > /x; sleep 60"]) as c:
            await c.write_file("/a", "async")
            got = await c.read_file("/a")
            await c.copy_out("/a", tmp_path / "a")
            img = await c.commit()
            await c.reset()
            after = (await c.exec(["sh", "-c", "ls /a 2>&1 || true"])).stdout
        res = await pyrt.aio.run(img, ["cat", "/a"])
        assert isinstance(after, bytes)
        return got, after, res.stdout or b""

    got, after, committed = asyncio.run(scenario())
    assert got == b"async" and (tmp_path / "a").read_bytes() == b"async"
    assert b"No such file" in after
    assert committed == b"async"
