"""A root caller's sandboxed containers (rootless=True, and every unprivileged container of the
host image) map their ids to an unprivileged range: from inside, uid 0 is a host id nobody
uses; the host's root-owned files, unix sockets among them, are someone else's; an image's
own owners are kept. Checked from inside the container, and on the host."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyrt
from helpers import answer_each
from pyrt.host import userns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the range is a root caller's")

BASE, COUNT, GBASE, _ = userns.sandbox_range()

CONNECT = """
import socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        print(path, "connected", s.recv(10).decode())
    except OSError as e:
        print(path, "refused", e.errno)
"""


@pytest.fixture
def host_sockets() -> Iterator[tuple[str, str]]:
    """Listeners under /var/tmp, outside the container's private /tmp and /run: one of root's
    with mode 0755 (no other user may connect), one anybody may use (0777)."""
    d = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="pyrt-sock-"))
    os.chmod(d, 0o755)
    servers = []
    paths = []
    for name, mode in (("root-only.sock", 0o755), ("anyone.sock", 0o777)):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / name))
        os.chmod(d / name, mode)
        s.listen(8)
        s.settimeout(5)
        servers.append(s)
        paths.append(str(d / name))
    for s in servers:
        answer_each(s, b"hello")
    yield paths[0], paths[1]
    for s in servers:
        s.close()
    for p in paths:
        os.unlink(p)
    os.rmdir(d)


@pytest.mark.parametrize("network", ["none", "private", "host"])
def test_host_image_reaches_no_socket_an_unprivileged_user_could_not(
    host_sockets: tuple[str, str], network: str
) -> None:
    root_only, anyone = host_sockets
    r = pyrt.run(pyrt.Image.host(), ["/usr/bin/python3", "-c", CONNECT, root_only, anyone],
                 network=network, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{root_only} refused 13", lines
    # What any host user may reach, the container may too (the limit SECURITY.md states).
    assert lines[1] == f"{anyone} connected hello", lines


def test_host_image_root_is_an_unprivileged_id() -> None:
    probe = "cat /proc/self/uid_map; id -u; cat /etc/shadow >/dev/null; echo rc=$?"
    r = pyrt.run(pyrt.Image.host(), ["sh", "-c", probe], text=True)
    inside, outside, count = (int(x) for x in r.stdout.split("\n")[0].split())
    assert (inside, outside, count) == (0, BASE, COUNT) and outside != 0
    assert r.stdout.split("\n")[1] == "0"
    assert "rc=1" in r.stdout, "root inside must not read the host's /etc/shadow"


def test_privileged_host_image_stays_host_root() -> None:
    r = pyrt.run(pyrt.Image.host(), ["cat", "/proc/self/uid_map"], privileged=True, text=True)
    assert r.stdout.split()[:2] == ["0", "0"]


def test_rootless_true_as_root_maps_a_range_and_keeps_image_owners(
    rootfs: Path, tmp_path: Path
) -> None:
    root = tmp_path / "img"
    import shutil

    shutil.copytree(rootfs, root, symlinks=True)
    (root / "owned").write_text("x")
    os.chown(root / "owned", 1000, 1000)
    (root / "setuid").write_text("")
    os.chmod(root / "setuid", 0o4755)
    img = pyrt.Image.load(root)
    probe = (
        "cat /proc/self/uid_map; stat -c '%u:%g %a' /etc/passwd /owned /setuid; "
        "echo new > /etc/new && stat -c '%u:%g' /etc/new; chown 1000:1000 /etc/new && echo chowned"
    )
    with pyrt.Container(img, ["sh", "-c", probe + "; sleep 60"], rootless=True) as c:
        c.wait_for_log("chowned", timeout=10)
        out = c.logs().decode().splitlines()
        assert out[0].split() == ["0", str(BASE), str(COUNT)]
        assert out[1:4] == ["0:0 644", "1000:1000 644", "0:0 4755"]
        assert out[4:] == ["0:0", "chowned"]
        # On the host, what the container wrote belongs to the range.
        upper = c._dir.upper  # type: ignore[union-attr]
        st = os.stat(upper / "etc" / "new")
        assert (st.st_uid, st.st_gid) == (BASE + 1000, GBASE + 1000)
        # Files in and out of the running container, as its root.
        c.write_file("/tmp/put", b"in\n")
        assert c.exec(["stat", "-c", "%u:%g", "/tmp/put"], text=True).stdout == "0:0\n"
        assert c.read_file("/etc/new") == b"new\n"
        img2 = c.commit()
    # The commit's layer holds the container's own ids, not the host's.
    r = pyrt.run(img2, ["stat", "-c", "%u:%g", "/etc/new", "/owned"], text=True)
    assert r.stdout == "1000:1000\n1000:1000\n"
    # A stopped container takes files too, owned by its root inside.
    c2 = pyrt.Container(img, ["stat", "-c", "%u:%g", "/cfg"], rootless=True)
    c2.write_file("/cfg", "x")
    assert c2.run(text=True).stdout == "0:0\n"
    c2.remove()


def test_the_layer_copy_is_made_once_and_collected_with_its_layer(rootfs: Path) -> None:
    from imagetools import busybox_layer, make_layout

    img = pyrt.Image.load(make_layout(Path(tempfile.mkdtemp()) / "lay", [busybox_layer(rootfs)]))
    assert pyrt.run(img, ["id", "-u"], rootless=True, text=True).stdout == "0\n"
    layer = Path(img.lower[0]).parent
    copies = [p for p in layer.iterdir() if p.name.startswith("shifted-")]
    assert [p.name for p in copies] == [f"shifted-{BASE}-{GBASE}"]
    st = os.lstat(copies[0] / "bin")
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == BASE
    mtime = copies[0].stat().st_mtime_ns
    pyrt.run(img, ["true"], rootless=True)
    assert copies[0].stat().st_mtime_ns == mtime, "made once, then reused"


def test_a_sandboxed_container_joins_another_containers_network(image: pyrt.Image) -> None:
    """Born in the other's network namespace (its user namespace could not join it later):
    it reaches the other's loopback listener, and is still in the range."""
    serve = "while true; do nc -l -p 7070 -e echo joined; done"
    with pyrt.Container(image, ["sh", "-c", serve]) as server:
        server.wait_for_port(7070, timeout=10)
        probe = "cat /proc/self/uid_map; busybox nc 127.0.0.1 7070 </dev/null"
        r = pyrt.run(pyrt.Image.host(), ["sh", "-c", probe], network=server, text=True)
        assert r.returncode == 0, r.stderr
        uid_line, answer = r.stdout.split("\n")[:2]
        assert [int(x) for x in uid_line.split()] == [0, BASE, COUNT]
        assert answer == "joined"
        server.wait_for_port(7070, timeout=10)
        r = pyrt.run(image, ["nc", "127.0.0.1", "7070"], rootless=True, network=server)
        assert r.returncode == 0 and r.stdout == b"joined\n", r.stderr
