"""pyrt.Network for unprivileged callers: the members of a network share one user namespace,
the network's (as a rootless podman pod's containers do), in which the hub and every member's
network namespace are made, so that they can be plugged into one bridge. Each scenario runs as
pyrt-ci (with subordinate ids) or nobody (without), in a process of its own, and reports what
its containers saw; the host-side checks (what is left after a SIGKILL of the owner) are made
here, as root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from usertools import NEEDS_SETPRIV, NOBODY, SETPRIV, as_user, public_dir, subid_user

pytestmark = [
    NEEDS_SETPRIV,
    pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

SUBID = subid_user()
needs_subids = pytest.mark.skipif(SUBID is None, reason="needs pyrt-ci with a /etc/subuid range")

#: Shared by the scenarios: a server, a fetch that cannot hang, and the image.
PRELUDE = """
import http.server, threading, urllib.request
img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz", tag="bb:netrl")
SERVE = 'mkdir -p /www; echo "i am $(hostname)" > /www/who; exec httpd -f -p 8080 -h /www'

def server(net, **kw):
    c = pyrt.Container(img, ["sh", "-c", SERVE], network=net, **kw).start()
    c.exec(["sh", "-c", "for i in $(seq 100); do nc -z 127.0.0.1 8080 && exit; sleep 0.1; done"])
    return c

def fetch(c, url, t=3):
    return c.exec(["timeout", str(t), "wget", "-qO-", url], text=True)

def netns_fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(("net:[", "user:[")):
                out.append(fd)
        except OSError:
            pass
    return out
"""


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


@needs_subids
def test_members_share_the_networks_user_namespace_and_reach_each_other(
    public: Path, tmp_path: Path
) -> None:
    assert SUBID is not None
    out = as_user(*SUBID, PRELUDE + """
class Host(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"the host\\n")
    def log_message(self, *a):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
threading.Thread(target=srv.serve_forever, daemon=True).start()
with pyrt.Network() as net, pyrt.Network() as other:
    db = server(net, name="db-1", aliases=["db", "database"], hostname="dbhost",
                ports={8080: None})
    app = pyrt.Container(img, ["sleep", "60"], network=net, aliases=["app"]).start()
    out["ips"] = [db.ip, app.ip]
    out["by_name"] = {n: fetch(app, f"http://{n}:8080/who").stdout
                      for n in ("db-1", "db", "database", "dbhost", db.ip)}
    back = db.exec(["sh", "-c", "echo pong | nc -w 2 app 9; ip neigh show dev eth0"],
                   text=True)
    out["back"] = app.ip in back.stdout
    out["maps"] = [c.exec(["cat", "/proc/self/uid_map"], text=True).stdout.split()
                   for c in (db, app)]
    out["userns"] = [os.readlink(f"/proc/{c.pid}/ns/user") for c in (db, app)]
    out["own_userns"] = os.readlink("/proc/self/ns/user")
    # Outbound, as network="private" has: the host's loopback, by its alias.
    out["host"] = fetch(app, f"http://host.pyrt.internal:{srv.server_address[1]}/").stdout
    # The published port, from this (the host's) side.
    with urllib.request.urlopen(f"http://127.0.0.1:{db.port(8080)}/who", timeout=5) as r:
        out["published"] = r.read().decode()
    # Outsiders: another network's member, and a private network's container.
    stranger = pyrt.Container(img, ["sleep", "60"], network=other).start()
    out["stranger_hosts"] = stranger.exec(["cat", "/etc/hosts"], text=True).stdout
    out["stranger_name"] = fetch(stranger, "http://db:8080/who", 1).returncode
    out["stranger_ip"] = fetch(stranger, f"http://{db.ip}:8080/who", 1).returncode
    out["private"] = pyrt.run(img, ["timeout", "1", "wget", "-qO-", f"http://{db.ip}:8080/who"],
                              network="private", timeout=20).returncode
    # A late member is named at once; a reset member keeps its address and names.
    late = server(net, aliases=["late"])
    out["late"] = fetch(app, "http://late:8080/who").stdout
    ip = db.ip
    db.reset()
    db.exec(["sh", "-c", "for i in $(seq 100); do nc -z 127.0.0.1 8080 && exit; sleep 0.1; done"])
    out["reset_ip"] = db.ip == ip
    out["after_reset"] = fetch(app, "http://db:8080/who").stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{db.port(8080)}/who", timeout=5) as r:
        out["published_after_reset"] = r.read().decode()
    try:
        net.remove()
        out["refused"] = ""
    except pyrt.PyrtError as e:
        out["refused"] = str(e)
    out["still_running"] = app.status
out["fds"] = netns_fds()
# Nothing of the user's runs any more but this process and its reaper: no member, no
# slirp4netns, no forwarder of a published port.
import subprocess
ps = subprocess.run(["ps", "-u", str(os.getuid()), "-o", "pid=,comm="], capture_output=True,
                    text=True).stdout.splitlines()
out["procs"] = [p for p in ps if p.strip() and int(p.split()[0]) != os.getpid()
                and p.split()[1] not in ("ps", "pyrt-reaper")]
from pyrt.host.places import state_root
out["networks"] = os.listdir(state_root() / "networks")
srv.shutdown()
""", public, tmp_path)  # fmt: skip
    db_ip, app_ip = out["ips"]
    assert db_ip != app_ip and db_ip.startswith("10.0.2.") and app_ip.startswith("10.0.2.")
    assert out["by_name"] == dict.fromkeys(["db-1", "db", "database", "dbhost", db_ip],
                                           "i am dbhost\n")  # fmt: skip
    assert out["back"], "the server never reached the app's address by name"
    # One user namespace, the network's (not the caller's), with the caller's usual mapping.
    assert out["userns"][0] == out["userns"][1] != out["own_userns"]
    assert out["maps"][0] == out["maps"][1]
    assert out["maps"][0][:4] == ["0", str(SUBID[0]), "1", "1"] and len(out["maps"][0]) == 6
    assert out["host"] == "the host\n"
    assert out["published"] == "i am dbhost\n"
    assert "db" not in out["stranger_hosts"].split()
    assert out["stranger_name"] != 0 and out["stranger_ip"] != 0 and out["private"] != 0
    assert out["late"].startswith("i am ")
    assert out["reset_ip"] and out["after_reset"] == "i am dbhost\n"
    assert out["published_after_reset"] == "i am dbhost\n"
    assert "members run" in out["refused"] and out["still_running"] == "running"
    assert out["fds"] == [] and out["networks"] == [] and out["leftover"] == []
    assert out["procs"] == []


def test_a_caller_without_subordinate_ids_gets_a_network_too(public: Path, tmp_path: Path) -> None:
    out = as_user(NOBODY, NOBODY, PRELUDE + """
with pyrt.Network() as net:
    web = pyrt.Container(img, ["sh", "-c", SERVE], network=net, aliases=["web"],
                         ports={8080: None}).start()
    # From the host side, through a forward of the network's slirp4netns.
    web.wait_for_http(8080, "/who", timeout=10)
    # The published port's forwarder: a process of the caller's that entered the network's
    # user namespace and the member's network namespace, with no capability left.
    helpers = [e for e in os.listdir("/proc") if e.isdigit()
               and open(f"/proc/{e}/comm").read().strip() == "memfd:pyrt-chil"]
    out["helpers"] = [(os.readlink(f"/proc/{h}/ns/net") == os.readlink(f"/proc/{web.pid}/ns/net"),
                       [ln.split()[1] for ln in open(f"/proc/{h}/status")
                        if ln.startswith(("CapEff", "CapPrm"))]) for h in helpers]
    with urllib.request.urlopen(f"http://127.0.0.1:{web.port(8080)}/who", timeout=5) as r:
        out["published"] = r.read().decode()
    try:
        web.wait_for_http(8080, "/missing", timeout=0.5)
        out["timeout"] = "no"
    except pyrt.TimeoutExpired:
        out["timeout"] = web.status
    cli = pyrt.Container(img, ["sleep", "60"], network=net).start()
    out["fetch"] = fetch(cli, "http://web:8080/who").stdout
    out["map"] = cli.exec(["cat", "/proc/self/uid_map"], text=True).stdout.split()
    out["root"] = cli.exec(["id", "-u"], text=True).stdout.strip()
""", public, tmp_path)  # fmt: skip
    assert out["fetch"].startswith("i am ")
    assert out["timeout"] == "running"
    assert out["published"].startswith("i am ")
    assert out["helpers"] == [[True, ["0000000000000000", "0000000000000000"]]]
    assert out["map"] == ["0", str(NOBODY), "1"]
    assert out["root"] == "0"
    assert out["leftover"] == []


@needs_subids
def test_nothing_is_left_when_a_rootless_owner_is_killed(public: Path) -> None:
    assert SUBID is not None
    uid, gid = SUBID
    home = Path(tempfile.mkdtemp(prefix="home-kill-", dir=public))
    os.chown(home, uid, gid)
    script = textwrap.dedent(f"""
        import sys, pyrt
        from pyrt.host.places import state_root
        img = pyrt.Image.load({str(public / "rootfs.tar.gz")!r}, tag="bb:netrl")
        net = pyrt.Network(name="doomed-rootless")
        a = pyrt.Container(img, ["sh", "-c", "mkdir /w; echo up > /w/i; exec httpd -f -h /w"],
                           network=net, aliases=["web"]).start()
        b = pyrt.Container(img, ["sleep", "600"], network=net, ports={{80: None}}).start()
        print(state_root(), a.id, b.id, flush=True)
        sys.stdin.read()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRT_", "XDG_"))}
    env["HOME"] = str(home)
    owner = subprocess.Popen(
        [SETPRIV or "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
         sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=home, env=env,
    )  # fmt: skip
    assert owner.stdout is not None
    root, *cids = owner.stdout.readline().split()
    assert len(cids) == 2, "the owner did not start its network"
    state = Path(root)
    # Another process of the user joins the network by name (its user namespace and hub are
    # the owner's descriptors) and reaches a member by its alias.
    try:
        assert (state / "networks" / "doomed-rootless").is_dir()
        joined = as_user(uid, gid, """
img = pyrt.Image.load(PUBLIC / "rootfs.tar.gz", tag="bb:netrl")
with pyrt.Container(img, ["sleep", "30"], network="doomed-rootless") as c:
    out["got"] = c.exec(["timeout", "3", "wget", "-qO-", "http://web/i"], text=True).stdout
""", public, home)  # fmt: skip
        assert joined["got"] == "up\n"
        # (Its own container is gone; the owner's two are the ones left.)
        assert set(joined["leftover"]) == set(cids)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 5
    while True:
        left = [
            str(p)
            for p in [
                state / "networks" / "doomed-rootless",
                *(state / "containers" / c for c in cids),
            ]
            if p.exists()
        ]
        left += [f"process {p}" for p in _processes_of(uid)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left


def _processes_of(uid: int) -> list[str]:
    """The user's processes (its containers' and helpers': sleep, slirp4netns, reapers)."""
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.stat(f"/proc/{e}").st_uid == uid:
                    out.append(f"{e} {Path(f'/proc/{e}/comm').read_text().strip()}")
            except OSError:
                pass
    return out


@needs_subids
def test_the_command_line_makes_joins_and_removes_a_rootless_network(
    public: Path, tmp_path: Path
) -> None:
    assert SUBID is not None
    out = as_user(*SUBID, PRELUDE + """
import contextlib, io
from pyrt.cli import main

def cli(*argv):
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return [code, buf.getvalue(), err.getvalue()]

out["create"] = cli("network", "create", "cli-net")
out["serve"] = cli("run", "-d", "--network", "cli-net", "--alias", "web", "--name", "w1",
                   "bb:netrl", "sh", "-c", SERVE)
# (A foreground run's container writes to this process's own descriptors.)
out["fetch"] = main(["run", "--rm", "--network", "cli-net", "bb:netrl", "sh", "-c",
                     "for i in $(seq 50); do wget -qO- http://web:8080/who >/dev/null && exit; "
                     "sleep 0.1; done; exit 1"])
out["ls"] = cli("network", "ls")
out["rm"] = cli("network", "rm", "cli-net")
out["rm_forced"] = cli("network", "rm", "-f", "cli-net")
out["rm_w1"] = cli("rm", "w1")
out["ls_after"] = cli("network", "ls")
""", public, tmp_path)  # fmt: skip
    assert out["create"][:2] == [0, "cli-net\n"]
    assert out["serve"][0] == 0 and len(out["serve"][1].strip()) == 32
    assert out["fetch"] == 0, "the member's alias did not answer from another member"
    assert "cli-net" in out["ls"][1] and out["ls"][0] == 0
    assert out["rm"][0] != 0, "removal with a running member was not refused"
    assert out["rm_forced"][0] == 0 and out["rm_w1"][0] == 0
    assert "cli-net" not in out["ls_after"][1] and out["leftover"] == []
    # The network's holder and the member's monitor end with them.
    deadline = time.monotonic() + 10
    while _processes_of(SUBID[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_of(SUBID[0]) == []
