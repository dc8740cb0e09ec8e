"""Bad input gets a typed error that names its cause, and leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyrt
from helpers import small_tmpfs, state_entries


@pytest.fixture(autouse=True)
def nothing_left() -> object:
    before = state_entries()
    yield
    assert state_entries() == before


def test_missing_image_path() -> None:
    with pytest.raises(pyrt.ImageNotFound, match="/no/such/image"):
        pyrt.Image.load("/no/such/image")
    assert issubclass(pyrt.ImageNotFound, pyrt.ImageError)
    assert issubclass(pyrt.ImageError, pyrt.PyrtError)


def test_missing_executable_by_path(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError) as ei:
        pyrt.run(image, ["/bin/nope"])
    e = ei.value
    assert e.stage == "exec" and e.errno == errno.ENOENT
    assert str(e) == "executable file not found: /bin/nope"


def test_missing_executable_by_name(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError, match=r"executable file not found in \$PATH: nope"):
        pyrt.run(image, ["nope"])


def test_non_executable_file(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError) as ei:
        pyrt.run(image, ["/etc/passwd"])
    assert ei.value.errno == errno.EACCES and "/etc/passwd" in str(ei.value)


def test_a_directory_is_not_executable(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError, match="/etc"):
        pyrt.run(image, ["/etc"])


def test_workdir_that_cannot_exist(image: pyrt.Image) -> None:
    # A path through a regular file can never be a directory.
    with pytest.raises(pyrt.SpawnError) as ei:
        pyrt.run(image, ["pwd"], workdir="/etc/passwd/sub")
    assert ei.value.stage == "cwd" and "/etc/passwd/sub" in str(ei.value)


def test_workdir_missing_on_a_read_only_root() -> None:
    with pytest.raises(pyrt.SpawnError) as ei:
        pyrt.run(pyrt.Image.host(), ["pwd"], workdir="/no/such/dir")
    assert ei.value.stage == "cwd"
    assert str(ei.value) == "working directory does not exist: /no/such/dir"


def test_missing_bind_source(image: pyrt.Image, tmp_path: Path) -> None:
    src = tmp_path / "nope"
    with pytest.raises(pyrt.SpawnError) as ei:
        pyrt.run(image, ["true"], mounts=[pyrt.Bind(src, "/data")])
    assert ei.value.stage == "mount" and ei.value.errno == errno.ENOENT
    assert str(ei.value) == f"bind source does not exist: {src}"


def test_unknown_user(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError, match="unable to find user ghost"):
        pyrt.run(image, ["true"], user="ghost")


def test_mount_target_with_dotdot_is_refused(image: pyrt.Image, tmp_path: Path) -> None:
    with pytest.raises(pyrt.SpawnError, match=r"'\.\.'") as ei:
        pyrt.run(image, ["true"], mounts=[pyrt.Bind(tmp_path, "/a/../../etc")])
    assert ei.value.stage == "spec"


def test_relative_mount_target(image: pyrt.Image, tmp_path: Path) -> None:
    with pytest.raises(pyrt.PyrtError, match="absolute"):
        pyrt.Container(image, ["true"], mounts=[pyrt.Tmpfs("data")])


def test_bad_sizes_and_options(image: pyrt.Image) -> None:
    with pytest.raises(ValueError, match="not a size"):
        pyrt.Container(image, ["true"], mounts=[pyrt.Tmpfs("/t", size="lots")])
    with pytest.raises(pyrt.InvalidOption, match=r"size=0"):  # the kernel's "no limit"
        pyrt.Tmpfs("/t", size=0)
    # Past 2^64 bytes the kernel's parser wraps around: 2^64 would have been size=0k, no limit.
    for huge in (1 << 64, "9" * 400, 10**30):
        with pytest.raises(pyrt.InvalidOption, match="larger than any machine's memory"):
            pyrt.Tmpfs("/t", size=huge)
    # The largest that is taken is the kernel's as given.
    r = pyrt.run(image, ["sh", "-c", "grep ' /t ' /proc/mounts"], text=True,
                 mounts=[pyrt.Tmpfs("/t", size=(1 << 62) - 4096)])  # fmt: skip
    assert f"size={((1 << 62) - 4096) >> 10}k" in r.stdout, r.stdout
    with pytest.raises(ValueError, match="unknown capability"):
        pyrt.Container(image, ["true"], cap_add=["CAP_FLY"])
    with pytest.raises(pyrt.PyrtError, match="network"):
        pyrt.Container(image, ["true"], network="bogus")
    with pytest.raises(TypeError):
        pyrt.Container(image, "echo hi")  # type: ignore[arg-type]


def test_empty_command_without_image_default(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.PyrtError, match="no command"):
        pyrt.Container(image)


def test_nul_in_argument(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError, match="NUL"):
        pyrt.run(image, ["echo", "a\0b"])


def test_errors_do_not_leak_descriptors(image: pyrt.Image) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(pyrt.SpawnError):
            pyrt.run(image, ["/bin/nope"])
    assert len(os.listdir("/proc/self/fd")) == before


FULL_DISKS = """
import json, os, sys, time, pyrt
from pathlib import Path
state, store, dest = (Path(p) for p in sys.argv[2:5])
img = pyrt.Image.load(sys.argv[1])
out = {}
running = []
for _ in range(50):  # until the state's disk is full
    try:
        running.append(pyrt.Container(img, ["sleep", "100"]).start())
    except pyrt.PyrtError as e:
        out["start"] = [type(e).__name__, e.stage, e.errno, str(e)]
        break
out["dirs"] = len(os.listdir(state / "containers")), len(running)
for _ in range(200):  # the failed start's directory, if it went through the trash: gone
    if not (state / "trash").exists() or not os.listdir(state / "trash"):
        break
    time.sleep(0.05)
if (state / "trash").exists():
    (state / "trash").rmdir()  # (made again when there is room)


def fill_up(files, name, data=""):  # files in the state until it is full; its error
    # First, the namespaces of the containers that ended let go: an overlay's inodes (those of
    # a layer deleted in place) are freed when its mount goes, on a thread of ours, a moment
    # after the container's end (the core's spawn::teardown).
    live = sum(1 for c in running if c.status == "running")
    for _ in range(500):
        names = []
        for t in os.listdir("/proc/self/task"):
            try:
                names.append(Path(f"/proc/self/task/{t}/comm").read_text().strip())
            except OSError:
                pass
        if names.count("pyrt-teardown") <= live:
            break
        time.sleep(0.01)
    while True:
        try:
            (state / f"{name}{len(files)}").write_text(data)
            files.append(state / f"{name}{len(files)}")
        except OSError as e:
            return str(e)


full = []  # what the failed start freed, taken again: the state's disk is full
fill_up(full, "full")
out["trash made"] = (state / "trash").exists()
try:  # its old layer cannot go to a trash that cannot be made: it is deleted in place
    out["reset"] = running[-1].reset().status
except pyrt.PyrtError as e:  # (or the overlay finds no inode for its work directory)
    out["reset"] = type(e).__name__
fill_up(full, "full")  # (a failed reset leaves its container's layer deleted, its inodes free)
try:
    pyrt.Network(name="full")
    out["network"] = "made"
except pyrt.PyrtError as e:
    out["network"] = [type(e).__name__, str(e)]
out["networks"] = os.listdir(state / "networks") if (state / "networks").exists() else []
for f in full:
    f.unlink()
for c in running[1:]:
    c.remove()
c = running[0]
for _ in range(200):  # the helper empties the trash
    if not os.listdir(state / "trash"):
        break
    time.sleep(0.05)
c.exec(["dd", "if=/dev/zero", "of=/big", "bs=1k", "count=2048"], check=True)
for what, call in (("commit", lambda: c.commit(tag="full:1")),
                   ("save", lambda: img.save(dest / "saved")),
                   ("archive", lambda: img.save(dest / "saved.tar", format="oci-archive"))):
    try:
        call()
        out[what] = "written"
    except pyrt.PyrtError as e:
        out[what] = [type(e).__name__, str(e)]
out["store tmp"] = os.listdir(store / "tmp")
out["dest"] = os.listdir(dest)
fill = []  # the state's disk full again, a trash there: the old layer moves, a new one cannot be
fill_up(fill, "fill", "x")
try:
    c.reset()
    out["full reset"] = c.status
except pyrt.PyrtError as e:
    out["full reset"] = [type(e).__name__, e.stage, e.errno]
c.remove()
for f in fill:
    f.unlink()
for _ in range(200):  # room made (once the helper has emptied the trash), then full to the
    if not os.listdir(state / "trash"):  # last inode, then one freed at a time: each of a
        break  # network's files (its directory, lock, members, slirp4netns's log and socket)
    time.sleep(0.05)  # runs short once
fill = []
out["fill"] = fill_up(fill, "fill")  # (for the message of a failure)
out["network short"] = []
while fill:
    try:
        pyrt.Network(name="short").remove()
        break
    except pyrt.PyrtError as e:
        out["network short"].append([type(e).__name__, str(e)])
    fill.pop().unlink()
for f in fill:
    f.unlink()
out["networks after"] = os.listdir(state / "networks")
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts small tmpfs (root)")
def test_full_disks_are_typed_errors_that_leave_nothing(rootfs: Path, tmp_path: Path) -> None:
    """A state directory without room for another container: SpawnError (ENOSPC, stage
    "state", or "rootfs" when the overlay's mount takes the last inode) naming the path, no
    half-made directory; a reset with no room for a trash deletes the old layer in place; a
    network short of any of its files (slirp4netns's socket among them), a NetworkError
    naming it. A store without room for a
    commit or a save's blobs, a destination without room for a save: ImageError naming what
    was written, no half-written blob or file."""
    with small_tmpfs(tmp_path / "state", "size=8m,nr_inodes=64") as state, \
            small_tmpfs(tmp_path / "store", "size=1m") as store, \
            small_tmpfs(tmp_path / "dest", "size=64k") as dest:  # fmt: skip
        env = dict(os.environ, PYRT_STATE=str(state), PYRT_ROOT=str(store))
        r = subprocess.run([sys.executable, "-c", FULL_DISKS, str(rootfs), str(state),
                            str(store), str(dest)], env=env, capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout)
    kind, stage, err, message = out["start"]
    # Where the last inode runs out decides the stage: a file of the container's directory
    # ("state"), or the overlay's work directory made by its mount ("rootfs"); the message
    # names the state's directory either way.
    assert (kind, err) == ("SpawnError", errno.ENOSPC) and stage in ("state", "rootfs"), out
    assert "No space left on device" in message and str(state) in message, message
    made, running = out["dirs"]
    assert made == running, "a start that failed left its directory"
    assert not out["trash made"] and out["reset"] in ("running", "SpawnError"), out
    assert out["network"][0] == "NetworkError" and out["networks"] == [], out
    assert "No space left on device" in out["network"][1], out
    assert len(out["network short"]) >= 4 and out["networks after"] == [], out
    for kind, message in out["network short"]:  # slirp4netns's socket's was a PyrtError
        assert kind == "NetworkError" and "No space left on device" in message, out
    assert out["commit"][0] == "ImageError" and "No space left" in out["commit"][1], out
    assert out["save"][0] == "ImageError" and str(dest) in out["save"][1], out
    assert out["archive"][0] == "ImageError", out
    assert out["store tmp"] == [] and out["dest"] == [], out
    # The old layer moves to the trash with no inode to spare, and the helper deletes it
    # there while the reset goes on: the fresh layer finds the room that frees (running), or
    # not yet (a typed ENOSPC naming the state), or some of it (its directories made, the
    # overlay's work directory not: ENOSPC at the root's mount, as a start's).
    assert out["full reset"] in (
        "running",
        ["SpawnError", "state", errno.ENOSPC],
        ["SpawnError", "rootfs", errno.ENOSPC],
    ), out
