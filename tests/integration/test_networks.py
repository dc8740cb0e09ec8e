"""pyrt.Network: several containers, each in its own network namespace, reaching each other by
name and alias on a shared segment; outbound access as network="private" has; nobody else on
it; published ports on members; addresses kept across reset; removal refused while members run;
and nothing of it left after its owner dies. Effects are checked from inside the members (what
their wget and /etc/hosts see) and on the host (namespaces, helpers, registry)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

import pyrt
from helpers import helper_processes, netns_descriptors

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="pyrt.Network needs root"),
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

SERVE = 'echo "i am $(hostname)" > /www/who; exec httpd -f -p 8080 -h /www'


def server(image: pyrt.Image, net: object, **kw: object) -> pyrt.Container:
    c = pyrt.Container(image, ["sh", "-c", "mkdir -p /www; " + SERVE], network=net, **kw)  # type: ignore[arg-type]
    c.start()
    c.wait_for_http(8080, "/who", timeout=10)
    return c


def fetch(c: pyrt.Container, url: str, timeout: int = 3) -> pyrt.Result:
    # (busybox's own wget -T crashes on a timeout: measured with Debian's 1.35.)
    return c.exec(["timeout", str(timeout), "wget", "-qO-", url], text=True)


def test_members_reach_each_other_by_name_and_alias(image: pyrt.Image) -> None:
    with pyrt.Network() as net:
        db = server(image, net, name="db-1", aliases=["db", "database"], hostname="dbhost")
        app = pyrt.Container(image, ["sleep", "60"], network=net, aliases=["app"]).start()
        assert db.ip != app.ip and db.ip is not None and db.ip.startswith("10.0.2.")
        for name in ("db-1", "db", "database", "dbhost", db.ip):
            r = fetch(app, f"http://{name}:8080/who")
            assert r.returncode == 0 and r.stdout == "i am dbhost\n", (name, r)
        # Its own address on its own eth0, as the others see it.
        addr = app.exec(["ip", "-4", "-o", "addr", "show", "eth0"], text=True).stdout
        assert f"inet {app.ip}/24" in addr
        # And back: the server reaches the app's name.
        back = db.exec(["sh", "-c", "echo pong | nc -w 2 app 9 ; ip neigh show dev eth0"],
                       text=True)  # fmt: skip
        assert app.ip in back.stdout, "the server never reached the app's address by name"
        hosts = db.exec(["cat", "/etc/hosts"], text=True).stdout
        assert f"{app.ip}\tapp" in hosts
        assert sorted(c.id for c in net.containers) == sorted([db.id, app.id])


def test_a_member_that_joins_later_is_named_at_once_and_a_leaver_is_unnamed(
    image: pyrt.Image,
) -> None:
    with pyrt.Network() as net:
        app = pyrt.Container(image, ["sleep", "60"], network=net).start()
        assert fetch(app, "http://late:8080/who", 1).returncode != 0
        late = server(image, net, aliases=["late"])
        assert fetch(app, "http://late:8080/who").returncode == 0
        late.remove()
        assert "late" not in app.exec(["cat", "/etc/hosts"], text=True).stdout
        assert [c.id for c in net.containers] == [app.id]


def test_outsiders_cannot_reach_members(image: pyrt.Image) -> None:
    with pyrt.Network() as net, pyrt.Network() as other:
        db = server(image, net, aliases=["db"])
        assert db.ip is not None
        # Another network's member: the name means nothing there, the address (the same
        # subnet) is not this segment.
        stranger = pyrt.Container(image, ["sleep", "60"], network=other).start()
        assert "db" not in stranger.exec(["cat", "/etc/hosts"], text=True).stdout.split()
        assert fetch(stranger, "http://db:8080/who", 1).returncode != 0
        assert fetch(stranger, f"http://{db.ip}:8080/who", 1).returncode != 0
        # A container on a private network of its own.
        r = pyrt.run(image, ["timeout", "1", "wget", "-qO-", f"http://{db.ip}:8080/who"],
                     network="private", timeout=20)  # fmt: skip
        assert r.returncode != 0
        # The host's own namespace has no route to the segment (its default route may still
        # take the address somewhere else: whatever answers there is not the member).
        try:
            with urllib.request.urlopen(f"http://{db.ip}:8080/who", timeout=2) as resp:
                assert not resp.read().startswith(b"i am")
        except OSError:
            pass
        stranger.remove()


def test_members_have_outbound_access_like_private(image: pyrt.Image) -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"the host\n")

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pyrt.Network() as net:
            c = pyrt.Container(image, ["sleep", "60"], network=net).start()
            r = fetch(c, f"http://host.pyrt.internal:{srv.server_address[1]}/")
            assert r.stdout == "the host\n", r
            assert "nameserver 10.0.2.3" in c.exec(["cat", "/etc/resolv.conf"], text=True).stdout
            route = c.exec(["ip", "-4", "route"], text=True).stdout
            assert "default via 10.0.2.2 dev eth0" in route
    finally:
        srv.shutdown()
        srv.server_close()


def test_published_ports_on_members(image: pyrt.Image) -> None:
    with pyrt.Network() as net:
        web = server(image, net, ports={8080: None})
        port = web.port(8080)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/who", timeout=5) as r:
            assert r.read().startswith(b"i am ")
        web.wait_for_http(8080, "/who", timeout=5)


def test_reset_keeps_address_and_names(image: pyrt.Image) -> None:
    with pyrt.Network() as net:
        db = server(image, net, aliases=["db"])
        app = pyrt.Container(image, ["sleep", "60"], network=net).start()
        ip = db.ip
        db.exec(["sh", "-c", "echo changed > /www/who"])
        db.reset()
        assert db.ip == ip
        db.wait_for_http(8080, "/who", timeout=10)
        assert fetch(app, "http://db:8080/who").stdout.startswith("i am ")
        app.reset()
        assert fetch(app, "http://db:8080/who").returncode == 0


def test_remove_is_refused_while_members_run_unless_forced(image: pyrt.Image) -> None:
    net = pyrt.Network(name="refusing-net")
    try:
        c = pyrt.Container(image, ["sleep", "60"], network=net).start()
        with pytest.raises(pyrt.PyrtError, match=r"refusing-net.*members run"):
            net.remove()
        assert c.status == "running"
        c.kill()
        c.wait()
        net.remove()  # exited members do not hold it
        assert c.status == "removed"
        c2 = None
        net = pyrt.Network(name="refusing-net")  # the name is free again
        c2 = pyrt.Container(image, ["sleep", "60"], network="refusing-net").start()
        net.remove(force=True)
        assert c2.status == "removed"
    finally:
        net.remove(force=True)


def test_bad_network_arguments_are_named(image: pyrt.Image) -> None:
    with pytest.raises(TypeError, match="name"):
        pyrt.Network(name=3)  # type: ignore[arg-type]
    with pytest.raises(pyrt.InvalidOption, match="name"):
        pyrt.Network(name="no spaces")
    with pytest.raises(pyrt.PyrtError, match="nosuchnet"):
        pyrt.Container(image, ["true"], network="nosuchnet")
    with pytest.raises(pyrt.InvalidOption, match="aliases"):
        pyrt.Container(image, ["true"], aliases=["db"])
    with pyrt.Network(name="taken-net") as net:
        with pytest.raises(pyrt.PyrtError, match=r"taken-net.*exists"):
            pyrt.Network(name="taken-net")
        with pytest.raises(TypeError, match="aliases"):
            pyrt.Container(image, ["true"], network=net, aliases="db")
        with pytest.raises(pyrt.InvalidOption, match="aliases"):
            pyrt.Container(image, ["true"], network=net, aliases=["bad name"])


def test_nothing_is_left_when_the_owner_is_killed(image: pyrt.Image, tmp_path: Path) -> None:
    from pyrt.host.places import state_root

    script = textwrap.dedent(f"""
        import sys, pyrt
        img = pyrt.Image.load({str(image.source)!r})
        net = pyrt.Network(name="doomed-net")
        c = pyrt.Container(img, ["sleep", "600"], network=net).start()
        print(c.id, flush=True)
        sys.stdin.read()
    """)
    slirps = helper_processes("slirp4netns")
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert owner.stdout is not None
    cid = owner.stdout.readline().strip()
    assert len(cid) == 32
    assert (state_root() / "networks" / "doomed-net").is_dir()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [p for p in (state_root() / "networks" / "doomed-net",
                            state_root() / "containers" / cid) if p.exists()]  # fmt: skip
        left += [f"slirp4netns {p}" for p in helper_processes("slirp4netns") - slirps]
        if not left:
            break
        time.sleep(0.05)
    assert not left
    # The name is free again.
    pyrt.Network(name="doomed-net").remove()
    assert not netns_descriptors()


def test_the_command_line_makes_joins_lists_and_removes_networks(rootfs: Path) -> None:
    from pyrt.host.places import state_root

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pyrt", *args], capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    assert cli("network", "create", "cli-net").stdout == "cli-net\n"
    try:
        serve = "mkdir /www; echo hello > /www/i; httpd -f -h /www"
        web = cli("run", "-d", "--network", "cli-net", "--alias", "web", "--name", "cli-web",
                  str(rootfs), "sh", "-c", serve)  # fmt: skip
        assert web.returncode == 0, web.stderr
        got = ""
        for _ in range(50):  # until httpd listens
            r = cli(
                "run", "--rm", "--network", "cli-net", str(rootfs), "wget", "-qO-", "http://web/i"
            )
            got = r.stdout
            if got:
                break
            time.sleep(0.1)
        assert got == "hello\n"
        ls = cli("network", "ls").stdout
        assert "cli-net" in ls and "cli-web/web" in ls
        refused = cli("network", "rm", "cli-net")
        assert refused.returncode == 125 and "members run" in refused.stderr
        assert "running" in cli("ps").stdout
        assert cli("network", "rm", "-f", "cli-net").returncode == 0
        assert not (state_root() / "networks" / "cli-net").exists()
        assert "cli-net" not in cli("network", "ls").stdout
        bad = cli("run", "--network", "no-such-net", str(rootfs), "true")
        assert bad.returncode == 125 and "no-such-net" in bad.stderr
    finally:
        cli("rm", "cli-web")
        cli("network", "rm", "-f", "cli-net")


def test_members_with_a_user_namespace_serve_low_ports_and_take_execs(image: pyrt.Image) -> None:
    """Root's host-image and rootless=True containers run in a user namespace of an
    unprivileged range: the member's namespace is root's, yet they bind port 80 (as in
    Docker's containers) and exec joins them (the exec joins the user namespace last)."""
    serve = (
        "mkdir -p /tmp/www; echo sandboxed > /tmp/www/i; exec busybox httpd -f -p 80 -h /tmp/www"
    )
    with pyrt.Network() as net:
        web = pyrt.Container(pyrt.Image.host(), ["sh", "-c", serve], network=net,
                             aliases=["web"]).start()  # fmt: skip
        mapped = pyrt.Container(image, ["sleep", "60"], network=net, rootless=True).start()
        assert web.exec(["cat", "/proc/self/uid_map"], text=True).stdout.split()[1] != "0"
        web.wait_for_http(80, "/i", timeout=10)
        assert fetch(mapped, "http://web/i").stdout == "sandboxed\n"
