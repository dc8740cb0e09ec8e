"""Rootless containers: each scenario runs as an unprivileged user (nobody, without subordinate
ids; and pyrt-ci, which .ci/run creates with a /etc/subuid range), in a process of its own,
and reports what it saw. Effects are checked from inside the container and on the host."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, NOBODY, as_user, public_dir, subid_user

pytestmark = NEEDS_SETPRIV


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


def test_run_exec_and_maps_without_subordinate_ids(public: Path, tmp_path: Path) -> None:
    out = as_user(
        NOBODY,
        NOBODY,
        """
        img = pyrt.Image.load(PUBLIC / "rootfs")
        r = pyrt.run(img, ["sh", "-c", "id -u; cat /proc/self/uid_map"], text=True)
        out["run"] = r.stdout.split()
        with pyrt.Container(img, ["sleep", "30"]) as c:
            out["exec"] = c.exec(["sh", "-c", "id -u; cat /proc/1/cmdline"]).stdout.decode()
        """,
        public,
        tmp_path,
    )
    assert out["run"] == ["0", "0", str(NOBODY), "1"]
    assert out["exec"] == "0\nsleep\x0030\x00"
    assert out["leftover"] == []


def test_bind_mounts_and_host_permissions(public: Path, tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(dir=public))
    os.chown(shared, NOBODY, NOBODY)
    secret = shared.parent / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    out = as_user(
        NOBODY,
        NOBODY,
        f"""
        img = pyrt.Image.load(PUBLIC / "rootfs")
        mounts = [pyrt.Bind({str(shared)!r}, "/data"), pyrt.Bind({str(secret)!r}, "/secret")]
        r = pyrt.run(img, ["sh", "-c", "echo hi > /data/made; cat /secret"], mounts=mounts,
                     text=True)
        out["code"], out["err"] = r.returncode, r.stderr
        """,
        public,
        tmp_path,
    )
    made = shared / "made"
    # Created as root inside, owned by the caller outside; root inside is still not root.
    assert made.read_text() == "hi\n" and made.stat().st_uid == NOBODY
    assert out["code"] != 0 and "Permission denied" in out["err"]


def test_store_images_and_refused_limits(public: Path, tmp_path: Path) -> None:
    out = as_user(
        NOBODY,
        NOBODY,
        """
        img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz", tag="bb:rootless")
        out["store"] = img.lower[0]
        stored = pyrt.Image.get("bb:rootless")
        out["marker"] = pyrt.run(stored, ["cat", "/etc/marker"]).stdout.decode()
        try:
            pyrt.run(img, ["true"], memory="64m")
        except pyrt.PyrtError as e:
            out["limits"] = str(e)
        try:
            pyrt.Container(img, ["true"], disk="64m")
        except pyrt.InvalidOption as e:
            out["disk"] = str(e)
        """,
        public,
        tmp_path,
    )
    assert "/.local/share/pyrt/" in out["store"] and out["store"].startswith(str(public))
    assert out["marker"] == "busybox-image\n"
    assert "delegated" in out["limits"] and "cgroup" in out["limits"]
    assert "disk=" in out["disk"] and "needs root" in out["disk"], out


def test_subordinate_ids_map_a_range(public: Path, tmp_path: Path) -> None:
    ids = subid_user()
    if ids is None:
        pytest.skip("needs the user pyrt-ci with a /etc/subuid range (.ci/run creates it)")
    out = as_user(
        *ids,
        """
        img = pyrt.Image.load(PUBLIC / "rootfs")
        r = pyrt.run(img, ["sh", "-c", "cat /proc/self/uid_map; touch /f; chown 1000:1000 /f; "
                           "stat -c '%u %g' /f; id -un"], user="0", text=True)
        out["lines"] = r.stdout.splitlines()
        out["app"] = pyrt.run(img, ["id", "-u"], user="app", text=True).stdout
        # From the store: the image's owners are kept (unpacked in the mapped namespace), and
        # removing the image deletes files the caller itself could not.
        stored = pyrt.Image.load(PUBLIC / "rootfs.tar.gz", tag="bb:sub")
        r = pyrt.run(stored, ["stat", "-c", "%u %g", "/home/app"], text=True)
        out["owner"] = r.stdout
        lower = stored.lower[0]
        stored.remove()
        out["removed"] = not os.path.exists(lower)
        # The mapped namespace's helper: root there, and its errors come back as they were.
        from pyrt.host import userns
        out["helper_uid"] = userns.in_mapped_namespace(lambda _fd: os.getuid())
        def fail(_fd):
            raise pyrt.UnsafeImageError("entry 'x' climbs out")
        try:
            userns.in_mapped_namespace(fail)
        except pyrt.UnsafeImageError as e:
            out["helper_error"] = str(e)
        """,
        public,
        tmp_path,
    )
    maps = [x.split() for x in out["lines"][:2]]
    assert maps[0] == ["0", str(ids[0]), "1"] and maps[1][0] == "1"
    assert out["lines"][2] == "1000 1000"  # a file of another owner: the range makes it possible
    assert out["app"] == "1000\n"
    assert out["owner"] == "1000 1000\n" and out["removed"]
    assert out["helper_uid"] == 0 and out["helper_error"] == "entry 'x' climbs out"
    assert out["leftover"] == []


def test_blocked_user_namespaces_are_named(public: Path, tmp_path: Path) -> None:
    """user.max_user_namespaces is per user namespace: set to 0 inside one made for the test,
    the container's own user namespace cannot be created, and the error says why and how to
    allow it."""
    code = (
        "import pyrt\n"
        "try:\n"
        "    pyrt.run(pyrt.Image.host(), ['true'], rootless=True)\n"
        "except pyrt.SpawnError as e:\n"
        "    print('ERROR', e)\n"
    )
    r = subprocess.run(
        [
            "unshare",
            "-U",
            "-r",
            "sh",
            "-c",
            f'echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c "$0"',
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "ERROR" in r.stdout, r.stdout + r.stderr
    assert "sysctl -w user.max_user_namespaces" in r.stdout


@pytest.mark.parametrize(("who", "flat"), [("nobody", False), ("nobody", True), ("subids", True)])
def test_layered_image_with_whiteouts(public: Path, tmp_path: Path, who: str, flat: bool) -> None:
    """A rootless store cannot make overlayfs's 0:0 device whiteouts: its layers carry xattr
    whiteouts and user.* opaque marks instead, which the container's overlay reads, and which
    the flattened fallback (no overlayfs: PYRT_NO_OVERLAY=1) applies when it copies layers."""
    from imagetools import Entry, busybox_layer, d, make_layout

    ids = (NOBODY, NOBODY) if who == "nobody" else subid_user()
    if ids is None:
        pytest.skip("needs the pyrt-ci user with a subordinate range (scripts/setup makes it)")
    layout = make_layout(
        public / f"layout-{who}-{flat}",
        [
            [
                *busybox_layer(public / "rootfs"),
                d("opq"),
                Entry("opq/old", b"o"),
                Entry("gone", b"g"),
                d("sub"),
                Entry("sub/gone", b"g"),
                Entry("sub/keep", b"k"),
            ],
            [
                Entry("opq/.wh..wh..opq", b""),
                Entry("opq/new", b"n"),
                Entry(".wh.gone", b""),
                Entry("sub/.wh.gone", b""),
                Entry("dev/tty9", kind=tarfile.CHRTYPE, mode=0o620),
            ],
        ],
    )
    subprocess.run(["chmod", "-R", "a+rX", str(layout)], check=True)
    out = as_user(
        *ids,
        f"""
        import warnings
        if {flat!r}:
            os.environ["PYRT_NO_OVERLAY"] = "1"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            img = pyrt.Image.load({str(layout)!r})
        out["warned"] = [str(x.message) for x in w]
        r = pyrt.run(img, ["sh", "-c", "ls -A /opq /sub; ls /gone"], text=True)
        out["seen"], out["err"] = r.stdout.split(), r.stderr
        """,
        public,
        tmp_path,
    )
    assert out["seen"] == ["/opq:", "new", "/sub:", "keep"]
    assert any("device nodes skipped" in m and "dev/tty9" in m for m in out["warned"])
    assert any("overlayfs is not available" in m for m in out["warned"]) == flat
    assert "gone" in out["err"]


def test_private_network_and_published_port(public: Path, tmp_path: Path) -> None:
    """Rootless: slirp4netns joins the container's own user and network namespaces while the
    container is held before its command; ports are slirp4netns's forwards."""
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = as_user(
            NOBODY,
            NOBODY,
            f"""
            import urllib.request
            img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz")
            url = "http://host.pyrt.internal:{srv.server_address[1]}/"
            r = pyrt.run(img, ["sh", "-c", f"wget -qO- {{url}} | head -c 15; ip -4 route"],
                         network="private", text=True)
            out["inside"] = r.stdout
            with pyrt.Container(img, ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                                network="private", ports={{8080: None}}) as c:
                c.wait_for_port(8080)
                url = f"http://127.0.0.1:{{c.port(8080)}}/marker"
                out["outside"] = urllib.request.urlopen(url, timeout=10).read().decode()
            """,
            public,
            tmp_path,
        )
    finally:
        srv.shutdown()
        srv.server_close()
    assert out["inside"].startswith("<!DOCTYPE HTML>") and "default via 10.0.2.2" in out["inside"]
    assert out["outside"] == "busybox-image\n"
    assert out["leftover"] == []


def test_two_rootless_containers_talk_and_taken_ports(public: Path, tmp_path: Path) -> None:
    """Rootless containers each have a user namespace of their own, so one reaches the other
    through its published port on the host's loopback (host.pyrt.internal); a host port that
    is taken is a clear error."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        out = as_user(
            NOBODY,
            NOBODY,
            f"""
            img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz")
            with pyrt.Container(img, ["httpd", "-f", "-p", "8080", "-h", "/etc"],
                                network="private", ports={{8080: None}}) as web:
                web.wait_for_port(8080)
                url = f"http://host.pyrt.internal:{{web.port(8080)}}/marker"
                r = pyrt.run(img, ["wget", "-qO-", url], network="private")
                out["fetched"] = r.stdout.decode()
            try:
                pyrt.run(img, ["true"], network="private", ports={{80: {busy}}})
            except pyrt.PyrtError as e:
                out["taken"] = str(e)
            try:
                pyrt.Container(img, ["true"], network=web)
            except pyrt.PyrtError as e:
                out["join"] = str(e)
            """,
            public,
            tmp_path,
        )
    assert out["fetched"] == "busybox-image\n"
    assert str(busy) in out["taken"] and "in use" in out["taken"]
    assert "published port" in out["join"]
    assert out["leftover"] == []


STATE_SCENARIO = """
img = pyrt.Image.load(PUBLIC / "rootfs")
c = pyrt.Container(img, ["sh", "-c", "cat /cfg > /seen; echo up > /up; sleep 60"])
c.write_file("/cfg", "prepared\\n")
out["created"] = c.read_file("/cfg").decode()
c.start()
c.wait_for_file("/up")
out["seen"] = c.read_file("/seen").decode()
out["owner"] = c.exec(["stat", "-c", "%u:%g", "/cfg"], text=True).stdout
src = Path(os.environ["HOME"]) / "tree"
(src / "d").mkdir(parents=True)
(src / "d" / "f").write_text("in")
c.copy_in(src, "/tree")
out["copied_in"] = c.exec(["sh", "-c", "cat /tree/d/f; stat -c %u /tree/d/f"], text=True).stdout
c.exec(["sh", "-c", "mkdir /o && echo out > /o/f && chown 7:7 /o/f"])
dst = Path(os.environ["HOME"]) / "dst"
dst.mkdir()
c.copy_out("/o", dst)
st = os.stat(dst / "o" / "f")
out["copied_out"] = [(dst / "o" / "f").read_text(), st.st_uid == os.getuid()]
img2 = c.commit()
out["committed"] = pyrt.run(img2, ["cat", "/seen", "/tree/d/f"], text=True).stdout
c.reset()
c.wait_for_file("/up")
out["after_reset"] = c.exec(["sh", "-c", "ls /tree /cfg 2>&1 | wc -l; cat /seen"],
                            text=True).stdout
c.kill()
c.wait()
out["exited"] = c.read_file("/up").decode()
c.remove()
"""


@pytest.mark.parametrize("who", ["nobody", "subids"])
def test_files_commit_reset_rootless(who: str, public: Path, tmp_path: Path) -> None:
    if who == "subids":
        ids = subid_user()
        assert ids is not None, ".ci/run creates pyrt-ci with a subordinate id range"
        uid, gid = ids
    else:
        uid = gid = NOBODY
    out = as_user(uid, gid, STATE_SCENARIO, public, tmp_path)
    assert out["created"] == "prepared\n"
    assert out["seen"] == "prepared\n", "written before start, there when the command ran"
    assert out["owner"] == "0:0\n"
    assert out["copied_in"] == "in0\n"
    assert out["copied_out"] == ["out\n", True], "owned by the caller on the way out"
    assert out["committed"] == "prepared\nin"
    # After reset: /tree and /cfg are gone (2 lines of "No such file"), /seen is new (empty).
    assert out["after_reset"] == "2\n"
    assert out["exited"] == "up\n"
    assert out["leftover"] == []


OWNER_DEATH_SCENARIO = """
import subprocess, sys, time
from pyrt.host.places import state_root
CHILD = (
    "import pyrt, sys; c = pyrt.Container(pyrt.Image.load(sys.argv[1]), ['sh', '-c', "
    "'mkdir /d && touch /d/f && (chown -R 1000:1000 /d || true) && touch /up && sleep 1000']"
    ").start(); c.wait_for_file('/up'); print(c.id, flush=True); sys.stdin.read()"
)
exe = sys.executable if os.access(sys.executable, os.X_OK) else "/proc/self/exe"
env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyrt.__file__)))
child = subprocess.Popen([exe, "-c", CHILD, str(PUBLIC / "rootfs")], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
cid = child.stdout.readline().strip()
assert cid
d = state_root() / "containers" / cid
out["made"] = d.is_dir()
child.kill()
child.wait()
t = time.monotonic()
while d.exists() and time.monotonic() - t < 5:
    time.sleep(0.02)
out["left"] = d.exists()
out["took"] = time.monotonic() - t
"""


@pytest.mark.parametrize("who", ["nobody", "subids"])
def test_rootless_owner_killed_leaves_nothing_within_2s(
    who: str, public: Path, tmp_path: Path
) -> None:
    """Its reaper removes the state directory, files of subordinate ids included."""
    ids = subid_user() if who == "subids" else (NOBODY, NOBODY)
    assert ids is not None, ".ci/run creates pyrt-ci with a subordinate id range"
    out = as_user(*ids, OWNER_DEATH_SCENARIO, public, tmp_path)
    assert out["made"] and not out["left"] and out["took"] < 2, out
    assert out["leftover"] == []
