"""Root's published TCP ports through the kernel (``network/portlink.py``): a local client's
connection reaches the container's 127.0.0.1 as one connection, from the host's end of a link
of the container's own; the link opens nothing else in either direction; nothing of it remains
after ``remove()`` or the owner's SIGKILL; and without nftables, pyrt's forwarder serves.

What proves the path is what the server inside sees: the peer of a connection that came
through the forwarder is 127.0.0.1 (the forwarder connects from inside), through the link it
is the host's end of the link, in 198.18.0.0/15."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Union

import pytest

import pyrt
from helpers import answer_each, port_links
from pyrt.network import portlink
from pyrt.network.portlink import KernelPorts, _HostTable

NFT = shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the kernel path is root's (host nftables)"),
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns"),
    pytest.mark.skipif(NFT is None, reason="needs nft (Debian package nftables)"),
]

LINKS = ipaddress.ip_network("198.18.0.0/15")
#: A server bound to the container's 127.0.0.1 only, that logs each request's peer. Readiness
#: probes fetch /ready, the checked requests /x, so a probe's late log line is never counted.
SERVE_LOCAL = (
    "mkdir -p /www; echo hi > /www/x; : > /www/ready; exec httpd -f -vv -p 127.0.0.1:8080 -h /www"
)


def kernel(c: pyrt.Container) -> KernelPorts:
    k = c._net.kernel  # type: ignore[union-attr]
    assert isinstance(k, KernelPorts)
    k.wait()
    assert k.failed is None, k.failed
    return k


def peers(c: pyrt.Container, count: int) -> list[str]:
    """The peers the server logged for requests of /x (httpd -vv: "ADDR:PORT: url:/x"), once
    ``count`` of them are there (httpd logs after it answers), or what is there after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        found = re.findall(r"^([\d.]+):\d+: url:/x$", c.logs().decode(), re.M)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def get(port: int, host: str = "127.0.0.1") -> bytes:
    with urllib.request.urlopen(f"http://{host}:{port}/x", timeout=5) as r:
        body: bytes = r.read()
        return body


def started(image: pyrt.Image, network: Union[str, pyrt.Network], **kw: object) -> pyrt.Container:
    c = pyrt.Container(image, ["sh", "-c", SERVE_LOCAL], network=network, **kw)  # type: ignore[arg-type]
    c.start()
    c.wait_for_http(8080, "/ready", timeout=10)
    return c


@pytest.fixture(params=["private", "member"])
def network(request: pytest.FixtureRequest) -> object:
    if request.param == "private":
        yield "private"
    else:
        with pyrt.Network() as net:
            yield net


def test_a_local_connection_reaches_the_containers_loopback_through_the_link(
    image: pyrt.Image, network: Union[str, pyrt.Network]
) -> None:
    c = started(image, network, ports={8080: None})
    try:
        link = kernel(c).link
        assert link is not None
        assert get(c.port(8080)) == b"hi\n"
        seen = peers(c, 1)
        assert seen == [link.host], seen
        assert ipaddress.ip_address(link.host) in LINKS
        # The host's end is this link's, up, with that address.
        shown = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", link.name],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert f"{link.host}/30" in shown
        # Inside: a link of its own with the other address.
        inside = c.exec(["ip", "-4", "-o", "addr", "show", "dev", portlink.INSIDE], text=True)
        assert f"{link.inside}/30" in inside.stdout
        # ... of link scope: the container's own address is still its only global one.
        own = c.exec(["ip", "-4", "-o", "addr", "show", "scope", "global"], text=True).stdout
        assert c.ip is not None and [c.ip] == re.findall(r"inet ([\d.]+)/", own), own
    finally:
        c.remove()


def test_a_port_published_on_every_address_is_reached_on_a_local_non_loopback_one(
    image: pyrt.Image,
) -> None:
    local = _local_address()
    c = started(image, "private", ports={8080: ("0.0.0.0", 0)})
    try:
        link = kernel(c).link
        assert link is not None
        assert get(c.port(8080), local) == b"hi\n"
        assert get(c.port(8080)) == b"hi\n"
        assert peers(c, 2) == [link.host, link.host]
    finally:
        c.remove()


def test_the_link_opens_nothing_else(image: pyrt.Image) -> None:
    """The host reaches the inside address only through the published port's rewrite; the
    container reaches nothing of the host through the link; nothing is forwarded through it."""
    cmd = SERVE_LOCAL.replace("exec httpd", "httpd -p 0.0.0.0:9090 -h /www; exec httpd")
    c = pyrt.Container(image, ["sh", "-c", cmd], network="private", ports={8080: None})
    c.start()
    host = socket.create_server(("0.0.0.0", 0))
    answer_each(host, b"ok\n")
    try:
        c.wait_for_http(8080, "/ready", timeout=10)
        link = kernel(c).link
        assert link is not None
        assert get(c.port(8080)) == b"hi\n"
        # Straight to the inside address: the published port and one published nowhere (a
        # server listens on every address of the container there).
        for port in (8080, 9090):
            with pytest.raises(OSError):
                socket.create_connection((link.inside, port), timeout=2).close()
        # From inside: the host's end, where a host server listens on every address.
        port = host.getsockname()[1]
        r = c.exec(["timeout", "5", "nc", "-w", "2", link.host, str(port)], text=True)
        assert "ok" not in r.stdout
        # Through slirp4netns the same server is reached: the test's own check.
        r = c.exec(["timeout", "5", "nc", "-w", "2", "10.0.2.2", str(port)], text=True)
        assert r.stdout == "ok\n"
    finally:
        host.close()
        c.remove()


def test_a_reset_member_keeps_its_link(image: pyrt.Image) -> None:
    with pyrt.Network() as net:
        c = started(image, net, ports={8080: None})
        link = kernel(c).link
        assert link is not None
        port = c.port(8080)
        c.reset()
        c.wait_for_http(8080, "/ready", timeout=10)
        assert c.port(8080) == port
        assert get(port) == b"hi\n"
        assert peers(c, 1) == [link.host]


def test_remove_takes_the_link_and_its_entries_away(image: pyrt.Image) -> None:
    c = started(image, "private", ports={8080: None})
    link = kernel(c).link
    assert link is not None
    port = c.port(8080)
    table = _HostTable._current
    assert table is not None
    assert f"{port}" in _nft("list", "map", *table.name.split(), "dnat_ports")
    c.remove()
    # The table goes with the process's last link (nft exits on its own time, so it may go
    # between two looks); while it is there, this container's entries are gone from it.
    assert NFT is not None
    listed = subprocess.run(
        [NFT, "list", "table", *table.name.split()], capture_output=True, text=True
    )
    if listed.returncode == 0:
        assert link.name not in listed.stdout and link.inside not in listed.stdout
        assert f". {port} :" not in listed.stdout
    _until(lambda: link.name not in port_links())
    with pytest.raises(OSError):
        get(port)
    # With the process's last link, the table and its nft go.
    _until(lambda: table.name.split()[1] not in _nft("list", "tables"))
    _until(lambda: not _children("nft"))


def test_the_owners_sigkill_leaves_no_table_and_no_link(rootfs: Path) -> None:
    code = (
        "import os, pyrt\n"
        f"img = pyrt.Image.load({str(rootfs)!r})\n"
        f"c = pyrt.Container(img, ['sh', '-c', {SERVE_LOCAL!r}], network='private',\n"
        "                   ports={8080: None}).start()\n"
        "c.wait_for_http(8080, '/ready', timeout=10)\n"
        "c._net.kernel.wait()\n"
        "assert c._net.kernel.failed is None, c._net.kernel.failed\n"
        "from pyrt.network.portlink import _HostTable\n"
        "print(c.port(8080), c._net.kernel.link.name, _HostTable._current.name, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    port, name, table = r.stdout.split(maxsplit=2)
    _until(lambda: table.split()[1] not in _nft("list", "tables"))
    _until(lambda: name not in port_links())
    with pytest.raises(OSError):
        get(int(port))


def test_without_nft_the_forwarder_serves(
    image: pyrt.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = portlink.find_tool
    monkeypatch.setattr(portlink, "find_tool", lambda name: None if name == "nft" else real(name))
    monkeypatch.setattr(_HostTable, "_current", None)
    monkeypatch.setattr(KernelPorts, "_warned", False)
    with pytest.warns(RuntimeWarning, match="needs nft"):
        c = started(image, "private", ports={8080: None})
        c._net.kernel.wait()  # type: ignore[union-attr]
    try:
        assert c._net.kernel.failed is not None  # type: ignore[union-attr]
        assert get(c.port(8080)) == b"hi\n"
        assert peers(c, 1) == ["127.0.0.1"]  # the forwarder's connection, from inside
    finally:
        c.remove()


def _children(comm: str) -> list[int]:
    """This process's children named ``comm``, zombies included."""
    out = []
    for e in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{e}/stat").read_text().rpartition(")")[2].split()
            name = Path(f"/proc/{e}/comm").read_text().strip()
        except (OSError, ValueError):
            continue
        if name == comm and int(fields[1]) == os.getpid():
            out.append(int(e))
    return out


def _nft(*args: str) -> str:
    assert NFT is not None
    return subprocess.run([NFT, *args], capture_output=True, text=True, check=True).stdout


def _until(ok: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within 5 s"
        time.sleep(0.05)


def _local_address() -> str:
    """An address of this host that is not a loopback one."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    for line in out.splitlines():
        addr = line.split()[3].split("/")[0]
        if ipaddress.ip_address(addr) not in LINKS:
            return addr
    pytest.skip("this host has no global IPv4 address")
