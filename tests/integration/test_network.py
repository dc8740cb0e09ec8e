"""Networking: network="private" (slirp4netns) with outbound access, DNS files and the host's
loopback as host.pyrt.internal; published ports; containers sharing a network; "none" really
closed; and nothing left behind."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyrt
from helpers import helper_processes, netns_descriptors

pytestmark = pytest.mark.skipif(
    shutil.which("slirp4netns") is None, reason="needs slirp4netns (Debian package slirp4netns)"
)


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 that answers "from the host"."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_private_network_reaches_the_host_loopback(image: pyrt.Image, host_server: int) -> None:
    r = pyrt.run(
        image,
        [
            "sh",
            "-c",
            f"wget -qO- http://host.pyrt.internal:{host_server}/; "
            "ip -4 route; cat /etc/resolv.conf",
        ],
        network="private",
        hostname="web",
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "from the host"
    assert any(x.startswith("default via 10.0.2.2") for x in lines)
    assert "nameserver 10.0.2.3" in lines
    hosts = pyrt.run(image, ["cat", "/etc/hosts"], network="private", hostname="web", text=True)
    assert "10.0.2.100\tweb" in hosts.stdout and "host.pyrt.internal" in hosts.stdout


def test_published_port_reaches_a_server_in_the_container(image: pyrt.Image) -> None:
    before = helper_processes("slirp4netns")
    with pyrt.Container(
        image, ["httpd", "-f", "-p", "8080", "-h", "/etc"], network="private", ports={8080: None}
    ) as c:
        port = c.port(8080)
        c.wait_for_port(8080)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/marker", timeout=10) as resp:
            assert resp.read() == b"busybox-image\n"
        with pytest.raises(pyrt.PyrtError, match="no published port 9090"):
            c.port(9090)
        assert helper_processes("slirp4netns") - before
    # remove() ended the forwarder and the namespace with the container.
    assert helper_processes("slirp4netns") == before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_given_host_port_and_address(image: pyrt.Image) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pyrt.Container(
        image,
        ["nc", "-ll", "-p", "7000", "-e", "echo", "hi"],
        network="private",
        ports={7000: f"127.0.0.1:{free}"},
    ) as c:
        assert c.port(7000) == free
        c.wait_for_port(7000)
        with socket.create_connection(("127.0.0.1", free), timeout=10) as conn:
            assert conn.makefile("rb").readline() == b"hi\n"


def test_port_already_taken_is_a_clear_error(image: pyrt.Image) -> None:
    before = helper_processes("slirp4netns")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        c = pyrt.Container(image, ["sleep", "30"], network="private", ports={80: port})
        with pytest.raises(pyrt.PyrtError, match=f"{port}.*already in use"):
            c.start()
        c.remove()
    assert helper_processes("slirp4netns") == before


def test_two_containers_share_a_network(image: pyrt.Image) -> None:
    with pyrt.Container(
        image, ["httpd", "-f", "-p", "8080", "-h", "/etc"], network="private"
    ) as db:
        db.wait_for_port(8080)
        r = pyrt.run(image, ["wget", "-qO-", "http://127.0.0.1:8080/marker"], network=db)
        assert r.stdout == b"busybox-image\n", r.stderr
    with pytest.raises(pyrt.PyrtError, match="not running"):
        pyrt.run(image, ["true"], network=db)


def test_network_none_has_no_route_out(image: pyrt.Image, host_server: int) -> None:
    r = pyrt.run(
        image,
        ["sh", "-c", f"ip -4 route; ip -o link | cut -d: -f2; nc -w 2 10.0.2.2 {host_server}"],
        text=True,
    )
    assert r.returncode != 0
    assert r.stdout.split() == ["lo"]
    assert "Network is unreachable" in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces are made ahead only for root")
def test_each_container_gets_a_fresh_network_namespace(image: pyrt.Image) -> None:
    """Network namespaces made ahead (for root): every container still gets one of its own,
    never the host's or a running container's, with only ``lo``, up; and the process holds none
    open when its containers are gone. (A freed namespace's inode number is reused by the
    kernel, so only namespaces alive at the same time are compared.)"""
    host = os.readlink("/proc/self/ns/net")
    show = "readlink /proc/self/ns/net; ip -o link | cut -d: -f2; cat /sys/class/net/lo/operstate"
    with pyrt.Container(image, ["sleep", "60"]) as a, pyrt.Container(image, ["sleep", "60"]) as b:
        running = {c.exec(["readlink", "/proc/self/ns/net"], text=True).stdout.strip()
                   for c in (a, b)}  # fmt: skip
        assert len(running) == 2 and host not in running
        for _ in range(4):
            r = pyrt.run(image, ["sh", "-c", show], text=True, check=True)
            ns, link, state = r.stdout.split()
            assert (link, state) == ("lo", "unknown")  # lo's state when up ("down" if not)
            assert ns != host and ns not in running
            time.sleep(0.02)  # time for the next one to be made ahead
    assert not netns_descriptors()


@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces are made ahead only for root")
def test_the_thread_making_namespaces_ahead_has_a_descriptor_table_of_its_own(
    image: pyrt.Image,
) -> None:
    """The thread that makes the next network namespace opens a socket to bring its ``lo`` up,
    at any moment: in the process's own table, that was one more descriptor of the caller's
    now and then (a caller counting its descriptors saw it). Its table is its own, empty
    between namespaces, and has none of the process's: a file opened here is not in it."""
    pyrt.run(image, ["true"])  # (the thread starts at the first take)
    makers = []
    for t in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):  # (a thread that ended meanwhile)
            if Path(f"/proc/self/task/{t}/comm").read_text().strip() == "pyrt-netns-next":
                makers.append(t)
    assert len(makers) == 1, makers
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        ours = os.listdir(f"/proc/self/task/{os.getpid()}/fd")
        assert str(fd) in ours
        for _ in range(3):
            pyrt.run(image, ["true"])
            time.sleep(0.05)  # (the next one made meanwhile)
            assert os.listdir(f"/proc/self/task/{makers[0]}/fd") == []
    finally:
        os.close(fd)


def test_ports_imply_a_private_network(image: pyrt.Image) -> None:
    # As `pyrt run -p` does: publishing a port without naming a network gives a private one.
    with pyrt.Container(
        image, ["httpd", "-f", "-p", "8080", "-h", "/etc"], ports={8080: None}
    ) as c:
        c.wait_for_port(8080)
        assert c.port(8080) > 0
    with pytest.raises(pyrt.PyrtError, match="network='private'"):
        pyrt.Container(image, ["true"], network="none", ports={80: None})
    with pytest.raises(TypeError, match="ports"):
        pyrt.Container(image, ["true"], ports=[80])  # type: ignore[arg-type]
    with pytest.raises(pyrt.PyrtError, match="not a container port"):
        pyrt.Container(image, ["true"], network="private", ports={"http": None})


def test_udp_port() -> None:
    """busybox has no UDP listener: the host image's Python is the server (by its real path:
    the host image has a /tmp of its own, where a virtual environment may live)."""
    import time

    server = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('0.0.0.0', 5353)); d, a = s.recvfrom(100); s.sendto(d.upper(), a)"
    )
    with pyrt.Container(
        pyrt.Image.host(),
        # Debian's python: the host image's root is an unprivileged id, which may not search
        # the directory the test's own interpreter lives in (a pyenv under /root).
        ["/usr/bin/python3", "-c", server],
        network="private",
        ports={"5353/udp": None},
    ) as c:
        port = c.port("5353/udp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            for _ in range(100):  # until the server is listening
                s.sendto(b"ping", ("127.0.0.1", port))
                try:
                    assert s.recv(100) == b"PING"
                    break
                except TimeoutError:
                    time.sleep(0.05)
            else:
                raise AssertionError("no UDP answer through the published port")


def test_cli_publish(image: pyrt.Image, rootfs: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    # --init: httpd as pid 1 would ignore the SIGTERM that ends the test.
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyrt.cli",
            "run",
            "--rm",
            "--init",
            "-p",
            f"{free}:8080",
            str(rootfs),
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/etc",
        ]
    )
    try:
        import time

        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free}/marker", timeout=2) as r:
                    assert r.read() == b"busybox-image\n"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        p.terminate()
        p.wait(10)


def test_owner_killed_leaves_no_network_behind(rootfs: Path) -> None:
    """slirp4netns holds the read end of a pipe only the owner writes to: when the owner dies,
    even by SIGKILL, it exits, and the container with it (parent-death signal)."""
    import time

    before = helper_processes("slirp4netns")
    code = (
        "import os, sys, pyrt\n"
        f"img = pyrt.Image.load({str(rootfs)!r})\n"
        "c = pyrt.Container(img, ['sleep', '60'], network='private', ports={80: None})\n"
        "c.start()\n"
        "print(c.port(80), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, r.stderr
    port = int(r.stdout)
    deadline = time.monotonic() + 5
    while helper_processes("slirp4netns") - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper_processes("slirp4netns") == before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    # The dead owner's directory is collected as any crashed container's is.
    subprocess.run([sys.executable, "-m", "pyrt.cli", "gc"], check=True, capture_output=True)
