"""Long-running containers: exec, logs, readiness, init, and state shared across processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pyrt
from helpers import exec_servers
from pyrt.host.collect import stale_cgroups
from pyrt.host.state import containers_root


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def pyrt_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyrt.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(params=["plain", "userns"])
def shell(image: pyrt.Image, request: pytest.FixtureRequest) -> pyrt.Container:
    # Without and with a user namespace of its own (where the ordinary exec forks once more
    # inside): each test here runs both ways; a container's execs after the first go through
    # its exec server either way.
    c = pyrt.Container(image, ["sleep", "120"], env={"BASE": "b"}, workdir="/tmp",
                       rootless=request.param == "userns")  # fmt: skip
    c.start()
    yield c
    c.remove()


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_the_exec_server_of_a_container(image: pyrt.Image, userns: bool) -> None:
    """From its second exec on, a container (with a user namespace of its own or without) is
    exec'd into by a server that joined its namespaces once: outside its pid namespace (the
    container cannot see it), its execs born inside, in the cgroup, as our children; gone
    with a reset and a remove."""
    c = pyrt.Container(image, ["sleep", "120"], rootless=userns, memory="64m").start()
    try:
        assert c.exec(["true"]).returncode == 0
        assert not exec_servers()  # not for a single exec
        # (ls to a file, then grep: in a pipe, ls may read /proc before sh has forked grep.)
        r = c.exec(["sh", "-c", "echo $$; ls /proc > /tmp/p; grep -c '^[0-9]' /tmp/p; "
                    "cat /proc/self/cgroup"], text=True)  # fmt: skip
        servers = exec_servers()
        assert len(servers) == 1, servers
        (server,) = servers
        lines = r.stdout.split("\n")
        # sleep, sh and ls: no server in there.
        assert int(lines[0]) > 1 and lines[1] == "3"
        host_ns = {k: os.readlink(f"/proc/{c.pid}/ns/{k}") for k in ("mnt", "net", "user", "pid")}
        srv_ns = {k: os.readlink(f"/proc/{server}/ns/{k}") for k in host_ns}
        assert {k: srv_ns[k] == host_ns[k] for k in host_ns} == {
            "mnt": True,
            "net": True,
            "user": True,
            "pid": False,
        }
        # Without a user namespace of the container's, the user namespace is the host's.
        assert (host_ns["user"] == os.readlink("/proc/self/ns/user")) is not userns
        assert os.readlink(f"/proc/{server}/ns/pid_for_children") == host_ns["pid"]
        cgroups = set(c._proc.cgroup_paths() if c._proc else [])
        assert cgroups  # (memory=): the server is outside, its execs inside
        procs = {int(x) for x in Path(next(iter(cgroups)), "cgroup.procs").read_text().split()}
        assert server not in procs
        cg = c.exec(["cat", "/proc/self/cgroup"], text=True).stdout
        assert any(line.endswith("/") for line in cg.splitlines() if ":memory:" in line), cg
        # The exec is ours: a long one, seen from the host, has this process as its parent.
        import threading

        t = threading.Thread(target=c.exec, args=(["sleep", "3"],))
        t.start()
        mine: list[int] = []
        deadline = time.monotonic() + 10
        while not mine and time.monotonic() < deadline:
            for e in os.listdir("/proc"):
                try:
                    if (e.isdigit() and Path(f"/proc/{e}/comm").read_text().strip() == "sleep"
                            and os.readlink(f"/proc/{e}/ns/pid") == host_ns["pid"]
                            and int(e) != c.pid):  # fmt: skip
                        stat = Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()
                        mine.append(int(stat[1]))
                except (OSError, ValueError, IndexError):
                    continue
            time.sleep(0.01)
        t.join()
        assert mine == [os.getpid()]
        c.reset()
        assert not _alive(server) and not exec_servers()
        for _ in range(3):
            assert c.exec(["true"]).returncode == 0
        assert len(exec_servers()) == 1
    finally:
        c.remove()
    assert not exec_servers()


def _seccomp_of(status: str) -> tuple[str, str]:
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return fields["Seccomp"].strip(), fields["Seccomp_filters"].strip()


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_the_exec_server_carries_the_containers_seccomp_filter(
    image: pyrt.Image, userns: bool
) -> None:
    """The server installs the container's filter on itself once; its execs inherit it and
    attach none of their own: one filter in each, the first exec (made without the server)
    and the served ones alike, whatever user, directory or environment they ask for. What the
    filter refuses stays refused in a served exec."""
    c = pyrt.Container(image, ["sleep", "120"], rootless=userns).start()
    try:
        show = ["cat", "/proc/self/status"]
        seen = [_seccomp_of(c.exec(show, text=True).stdout) for _ in range(3)]
        seen.append(_seccomp_of(c.exec(show, text=True, user="nobody", workdir="/tmp").stdout))
        seen.append(_seccomp_of(c.exec(show, text=True, env={"X": "1"}).stdout))
        assert seen == [("2", "1")] * 5, seen
        (server,) = exec_servers()
        assert _seccomp_of(Path(f"/proc/{server}/status").read_text()) == ("2", "1")
        # Docker's policy refuses unshare(CLONE_NEWUSER) to a container without
        # CAP_SYS_ADMIN: EPERM from the filter, whether the exec is served or not.
        r = c.exec(["unshare", "-U", "true"], text=True)
        assert r.returncode != 0 and "Operation not permitted" in r.stderr, r
    finally:
        c.remove()
    # A privileged container has no filter, nor its server.
    c = pyrt.Container(image, ["sleep", "120"], privileged=True).start()
    try:
        seen = [_seccomp_of(c.exec(show, text=True).stdout) for _ in range(3)]
        assert seen == [("0", "0")] * 3, seen
        (server,) = exec_servers()
        assert _seccomp_of(Path(f"/proc/{server}/status").read_text()) == ("0", "0")
    finally:
        c.remove()


def _caps_of(status: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":\t", 1) for line in status.splitlines())
            if k.startswith("Cap")}  # fmt: skip


@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_the_exec_server_carries_the_containers_bounding_set(
    image: pyrt.Image, userns: bool
) -> None:
    """The server cuts its bounding set to the container's once; its execs inherit it and drop
    nothing more: each has the capability sets of the container's own process (as the first
    exec, made without the server, has), as root or as another user. An exec that asks the
    core for a bounding set beyond the server's is not forked by it: it gets what it asked."""
    from pyrt import _core

    c = pyrt.Container(image, ["sleep", "120"], rootless=userns,
                       cap_drop=["NET_RAW", "CHOWN", "KILL"]).start()  # fmt: skip
    try:
        assert c.pid is not None and c._proc is not None
        own = _caps_of(Path(f"/proc/{c.pid}/status").read_text())
        show = ["cat", "/proc/self/status"]
        seen = [_caps_of(c.exec(show, text=True).stdout) for _ in range(3)]
        assert seen == [own] * 3, (seen, own)
        (server,) = exec_servers()
        assert _caps_of(Path(f"/proc/{server}/status").read_text())["CapBnd"] == own["CapBnd"]
        bounding = int(own["CapBnd"], 16)
        assert bounding & (1 << 13) == 0 and bounding & (1 << 0) == 0  # (NET_RAW, CHOWN)
        other = _caps_of(c.exec(show, text=True, user="nobody").stdout)
        assert other["CapBnd"] == own["CapBnd"] and int(other["CapEff"], 16) == 0
        # Through the core, a process naming CAP_NET_RAW in its bounding set: the server lacks
        # it, so the exec is made the ordinary way, with it.
        doc = c._exec_process(show, None, None, None)
        doc["capabilities"]["bounding"] = [*doc["capabilities"]["bounding"], "CAP_NET_RAW"]
        served = c._server[1] if c._server else None
        assert served is not None
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            e = _core.exec(c.pid, json.dumps(doc), null, w, null, c._proc.cgroup_paths(),
                           c._seccomp_json, server=served)  # fmt: skip
            os.close(w)
            w = -1
            got = b""
            while chunk := os.read(r, 65536):
                got += chunk
            assert e.wait(30) == 0
        finally:
            os.close(r)
            os.close(null)
            if w >= 0:
                os.close(w)
        wider = int(_caps_of(got.decode())["CapBnd"], 16)
        assert wider == bounding | (1 << 13), (hex(wider), hex(bounding))
    finally:
        c.remove()


SERVED_THEN_DIES = """
import sys, pyrt
c = pyrt.Container(pyrt.Image.load(sys.argv[1]), ["sleep", "120"], rootless=True).start()
for _ in range(3):
    c.exec(["true"])
print(c.id, flush=True)
sys.stdin.read()
"""


def test_an_exec_server_dies_with_its_owner(rootfs: Path) -> None:
    from helpers import assert_nothing_left_of

    argv = [sys.executable, "-c", SERVED_THEN_DIES, str(rootfs)]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        cid = p.stdout.readline().strip()
        servers = []
        for e in os.listdir("/proc"):
            try:
                if e.isdigit() and Path(f"/proc/{e}/comm").read_text().strip() == "pyrt-exec":
                    stat = Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == p.pid:
                        servers.append(int(e))
            except (OSError, ValueError, IndexError):
                continue
        assert len(servers) == 1 and len(cid) == 32
        p.kill()
        p.wait()
    deadline = time.monotonic() + 2
    while _alive(servers[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(servers[0])
    assert_nothing_left_of(cid)


def test_exec_with_users_envs_codes_and_stdin(shell: pyrt.Container) -> None:
    r = shell.exec(["sh", "-c", "echo $BASE $X; pwd; id -u; cat"], input=b"in", env={"X": "x"})
    assert r.stdout == b"b x\n/tmp\n0\nin" and r.returncode == 0
    r = shell.exec(["sh", "-c", "id -u; id -G; echo $HOME"], user="app", text=True)
    assert r.stdout.split() == ["1000", "1000", "10", "50", "/home/app"]
    assert shell.exec(["sh", "-c", "exit 9"]).returncode == 9
    assert shell.exec(["pwd"], workdir="/etc").stdout == b"/etc\n"
    with pytest.raises(pyrt.ContainerError):
        shell.exec(["false"], check=True)


def test_exec_shares_the_containers_namespaces(shell: pyrt.Container) -> None:
    shell.exec(["sh", "-c", "echo hello > /tmp/shared"])
    r = shell.exec(["sh", "-c", "cat /tmp/shared; hostname; cat /proc/1/cmdline"], text=True)
    assert r.stdout.split("\n")[:2] == ["hello", shell.id[:12]]
    assert r.stdout.split("\n")[2].startswith("sleep")  # its pid 1 is the container's


def test_exec_joins_every_namespace_and_gets_no_descriptor_of_ours(
    shell: pyrt.Container,
) -> None:
    # The exec joins through a pidfd of the container's first process, handed down: the
    # namespaces it sees are those of pid 1 inside and of that process on the host, and the
    # pidfd does not reach the command (0, 1, 2 and the descriptor ls reads the directory by).
    kinds = ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"]
    script = "; ".join(f"readlink /proc/self/ns/{k}; readlink /proc/1/ns/{k}" for k in kinds)
    lines = shell.exec(["sh", "-c", script], text=True).stdout.split()
    assert lines[0::2] == lines[1::2]
    assert lines[0::2] == [os.readlink(f"/proc/{shell.pid}/ns/{k}") for k in kinds]
    fds = shell.exec(["ls", "/proc/self/fd"], text=True).stdout.split()
    assert sorted(int(x) for x in fds) == [0, 1, 2, 3]
    # An exec with only its arguments given is the container's exec process, encoded once.
    assert json.loads(shell._plain_exec_doc(["a", "b"])) == shell._exec_process(
        ["a", "b"], None, None, None
    )


def test_a_plan_that_outgrows_the_pipe(shell: pyrt.Container, image: pyrt.Image) -> None:
    # The plan of an exec or a start goes into its pipe before the clone, as far as the pipe
    # takes it (64 KB); 200 KB of arguments make the rest follow once the child reads.
    a, b = "a" * 100_000, "b" * 100_000
    argv = ["sh", "-c", "echo ${#1} ${#2}", "sh", a, b]
    r = shell.exec(argv, text=True)
    assert r.stdout.split() == ["100000", "100000"] and r.returncode == 0
    r = pyrt.run(image, argv, text=True)
    assert r.stdout.split() == ["100000", "100000"] and r.returncode == 0


def test_exec_timeout_kills_only_the_exec(shell: pyrt.Container) -> None:
    with pytest.raises(pyrt.TimeoutExpired):
        shell.exec(["sleep", "30"], timeout=0.2)
    assert shell.status == "running"
    assert shell.exec(["true"]).returncode == 0


def test_exec_errors(shell: pyrt.Container, image: pyrt.Image) -> None:
    with pytest.raises(pyrt.SpawnError) as ei:
        shell.exec(["/bin/nope"])
    assert ei.value.errno == errno.ENOENT and "/bin/nope" in str(ei.value)
    with pytest.raises(pyrt.SpawnError, match="/nowhere"):
        shell.exec(["true"], workdir="/nowhere")
    c = pyrt.Container(image, ["true"])
    with pytest.raises(pyrt.PyrtError, match="not running"):
        c.exec(["true"])


def test_follow_logs_of_a_server_loop(image: pyrt.Image) -> None:
    loop = "i=0; while [ $i -lt 5 ]; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.05; done"
    with pyrt.Container(image, ["sh", "-c", loop]) as c:
        got = b"".join(c.follow_logs(timeout=10))
    lines = got.decode().splitlines()
    assert lines == [f"{k} {i}" for i in range(5) for k in ("line", "err")]


def test_logs_are_bounded(image: pyrt.Image, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyrt.container.spawning

    monkeypatch.setattr(pyrt.container.spawning, "LOG_CAP", 64 * 1024)
    script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done; echo END; sleep 30"
    with pyrt.Container(image, ["sh", "-c", script]) as c:
        c.wait_for_log("END", timeout=30)
        logs = c.logs()
    assert len(logs) <= 2 * 64 * 1024
    assert logs.endswith(b"END\n") and b"line-19999\n" in logs and not logs.startswith(b"line-0\n")


def test_wait_helpers(image: pyrt.Image) -> None:
    script = "sleep 0.3; echo ready on 8080; httpd -f -p 8080 & sleep 0.3; touch /tmp/flag; wait"
    with pyrt.Container(image, ["sh", "-c", script]) as c:
        t0 = time.monotonic()
        m = c.wait_for_log(r"ready on (\d+)", timeout=10)
        assert m.group(1) == b"8080"
        c.wait_for_port(8080, timeout=10)
        c.wait_for_file("/tmp/flag", timeout=10)
        r = c.wait_for_command(["test", "-e", "/tmp/flag"], timeout=10)
        assert r.returncode == 0
        # Milliseconds, not seconds: the whole wait is ~0.6 s of the script's own sleeps.
        assert time.monotonic() - t0 < 5


def test_wait_helpers_time_out_and_notice_an_exit(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "30"]) as c:
        for wait in (
            lambda: c.wait_for_log("never", timeout=0.2),
            lambda: c.wait_for_port(9, timeout=0.2),
            lambda: c.wait_for_file("/never", timeout=0.2),
            lambda: c.wait_for_command(["false"], timeout=0.2),
        ):
            with pytest.raises(pyrt.TimeoutExpired):
                wait()
    with pyrt.Container(image, ["sh", "-c", "sleep 0.1; exit 3"]) as c:
        with pytest.raises(pyrt.PyrtError, match="exited"):
            c.wait_for_log("never", timeout=10)


# Two orphans, each ending a moment after the start (the files say when it did).
ORPHANS = ("(sh -c 'sleep 0.1; touch /tmp/a' &); (sh -c 'sleep 0.1; touch /tmp/b' &); "
           "exec sleep 30")  # fmt: skip


def _processes(c: pyrt.Container) -> list[tuple[str, str]]:
    """(state, command) of every process of the container but the ps that lists them."""
    r = c.exec(["ps", "-o", "stat,comm"], text=True)
    rows = [line.split(None, 1) for line in r.stdout.splitlines()[1:]]
    return [(st, comm.strip()) for st, comm in rows if comm.strip() != "ps"]


def _once_orphans_ended(c: pyrt.Container, done: Callable[[list[tuple[str, str]]], bool]) -> int:
    """The zombies left once both orphans have ended and ``done`` holds for the process list
    (polled: on a loaded machine the orphans' end can take a while)."""
    c.wait_for_file("/tmp/a", timeout=30)
    c.wait_for_file("/tmp/b", timeout=30)
    deadline = time.monotonic() + 30
    while not done(procs := _processes(c)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sum(1 for st, _ in procs if st.startswith("Z"))


def test_zombies_pile_up_without_init(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", ORPHANS]) as c:
        left = _once_orphans_ended(c, lambda ps: sum(st.startswith("Z") for st, _ in ps) == 2)
        assert left == 2


def test_init_reaps_zombies_and_forwards_signals(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", ORPHANS], init=True) as c:
        # Settled: only init and the command's sleep remain, or zombies that init left.
        left = _once_orphans_ended(
            c,
            lambda ps: (
                [comm for st, comm in ps if not st.startswith("Z")] == ["pyrt-init", "sleep"]
            ),
        )
        assert left == 0
        assert c.exec(["cat", "/proc/1/comm"]).stdout == b"pyrt-init\n"  # for ps, as tini
        # SIGTERM reaches the command (a sleep, which dies of it), not an init that ignores it.
        t0 = time.monotonic()
        assert c.stop(timeout=10) == -15
        assert time.monotonic() - t0 < 5


def test_an_idle_init_is_named_for_ps(image: pyrt.Image) -> None:
    """A sandbox's pid 1 (a pool's, the pytest plugin's) says what it is."""
    from pyrt.config.idle import IDLE

    with pyrt.Container(image, IDLE, init=True) as c:
        assert c.exec(["cat", "/proc/1/comm"]).stdout == b"pyrt-init\n"


def test_init_passes_exit_codes_and_errors(image: pyrt.Image) -> None:
    assert pyrt.run(image, ["sh", "-c", "exit 7"], init=True).returncode == 7
    assert pyrt.run(image, ["sh", "-c", "kill -9 $$"], init=True).returncode == -9
    with pytest.raises(pyrt.SpawnError, match="/nope"):
        pyrt.run(image, ["/nope"], init=True)


OWNER = """
import sys, pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sh", "-c", "echo hello-log; sleep 120"], name=sys.argv[2]).start()
print(c.id, c.pid, flush=True)
sys.stdin.read()
c.remove()
"""


def test_a_second_process_lists_execs_and_removes(rootfs: Path) -> None:
    name = f"shared-{os.getpid()}"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(rootfs), name],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        cid, pid = owner.stdout.readline().split()
        ps = pyrt_cli("ps")
        assert name in ps.stdout and cid[:12] in ps.stdout
        r = pyrt_cli("exec", name, "sh", "-c", "echo from-exec; cat /proc/1/cmdline")
        assert r.returncode == 0 and r.stdout.startswith("from-exec\nsleep")  # sh exec'd it
        assert pyrt_cli("exec", cid[:8], "sh", "-c", "exit 5").returncode == 5
        assert pyrt_cli("logs", name).stdout == "hello-log\n"
        assert pyrt_cli("rm", name).returncode == 0
        # Dead (a zombie until its owner, blocked elsewhere, gets round to reaping it).
        deadline = time.monotonic() + 5
        while _alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(int(pid))
        assert name not in pyrt_cli("ps").stdout
    finally:
        owner.communicate("")
    assert not (containers_root() / cid).exists()


def test_names_are_unique_among_running_containers(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "30"], name="uniq-name"):
        with pytest.raises(pyrt.PyrtError, match="already in use"):
            pyrt.Container(image, ["sleep", "30"], name="uniq-name").start()


def test_run_detached_outlives_the_command_line(rootfs: Path) -> None:
    r = pyrt_cli("run", "-d", "--name", "detached-t", str(rootfs), "sh", "-c",
                 "echo up; exec sleep 120")  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip().splitlines()[-1]
    try:
        assert len(cid) == 32
        ps = pyrt_cli("ps").stdout
        assert "detached-t" in ps and "running" in ps
        assert pyrt_cli("exec", "detached-t", "echo", "in").stdout == "in\n"
        deadline = time.monotonic() + 5
        while pyrt_cli("logs", cid).stdout != "up\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pyrt_cli("logs", cid).stdout == "up\n"
        assert pyrt_cli("kill", "-s", "9", "detached-t").returncode == 0
        deadline = time.monotonic() + 5
        while "running" in pyrt_cli("ps").stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "exited" in pyrt_cli("ps").stdout
    finally:
        assert pyrt_cli("rm", cid).returncode == 0
    assert not (containers_root() / cid).exists()
    assert "detached-t" not in pyrt_cli("ps").stdout


def test_run_detached_reports_errors(rootfs: Path) -> None:
    r = pyrt_cli("run", "-d", str(rootfs), "/bin/nope")
    assert r.returncode == 127 and "/bin/nope" in r.stderr


CRASH_AT = """
import sys, pyrt
img = pyrt.Image.load(sys.argv[1])
pyrt.Container(img, ["sh", "-c", "sleep 100 & sleep 100"], memory="64m").start()
print("not killed", flush=True)
"""


@pytest.mark.parametrize(
    "point", ["dir-created", "state-written", "cgroup-created", "spawned", "running"]
)
def test_parent_killed_at_each_stage_of_start_leaves_nothing(rootfs: Path, point: str) -> None:
    """Within 2 s of the owner's SIGKILL, with no pyrt call in between (its reaper's work)."""
    from helpers import pyrt_cgroups

    before_dirs = set(os.listdir(containers_root()))
    before_cgroups = set(pyrt_cgroups())
    p = subprocess.run(
        [sys.executable, "-c", CRASH_AT, str(rootfs)],
        env=dict(os.environ, PYRT_FAULT=point), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == -9, (p.stdout, p.stderr)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        left = set(os.listdir(containers_root())) - before_dirs
        left |= set(pyrt_cgroups()) - before_cgroups
        if not left:
            break
        time.sleep(0.02)
    assert not left, f"2 s after the owner died at {point!r}: {sorted(left)}"
    r = pyrt_cli("gc")
    # Nothing of a container for gc to find (it may still collect layers other tests left).
    assert r.returncode == 0 and "layer sha256:" in r.stdout + "layer sha256:", r.stderr
    assert not [x for x in r.stdout.split() if len(x) == 32 or "/sys/fs/cgroup" in x], r.stdout


def test_context_manager_cleans_up_when_the_body_raises(image: pyrt.Image) -> None:
    with pytest.raises(RuntimeError), pyrt.Container(image, ["sleep", "60"], memory="64m") as c:
        pid = c.pid
        paths = c._proc.cgroup_paths()  # type: ignore[union-attr]
        raise RuntimeError("test body failed")
    assert c.status == "removed"
    assert not _alive(pid or 0)
    assert not any(os.path.exists(p) for p in paths)
    assert not (containers_root() / c.id).exists()


def test_context_manager_when_start_fails(image: pyrt.Image, tmp_path: Path) -> None:
    before = set(os.listdir(containers_root()))
    c = pyrt.Container(image, ["true"], mounts=[pyrt.Bind(tmp_path / "missing", "/m")])
    with pytest.raises(pyrt.SpawnError), c:
        pass
    assert set(os.listdir(containers_root())) == before
    assert stale_cgroups(set(os.listdir(containers_root()))) == []


def test_one_thread_waits_while_others_ask_and_signal(image: pyrt.Image) -> None:
    """The core's process handle is shared between threads: a blocking wait() must not make
    status, stats or kill from another thread fail (it did: "Already borrowed")."""
    import threading

    with pyrt.Container(image, ["sleep", "30"]) as c:
        got: list[int] = []
        waiter = threading.Thread(target=lambda: got.append(c.wait()))
        waiter.start()
        for _ in range(20):
            assert c.status == "running"
            c.stats()
            time.sleep(0.01)
        c.kill(signal.SIGKILL)  # (pid 1 of its namespace: TERM has no default action there)
        waiter.join(10)
        assert got == [-signal.SIGKILL] and c.status == "exited"


FREEZE_RACE = """
import sys, threading, pyrt
img = pyrt.Image.load(sys.argv[1])
hc = pyrt.Healthcheck(["CMD", "true"], interval=0.01)
with pyrt.Container(img, ["sleep", "60"], healthcheck=hc) as c:
    stop = threading.Event()
    def ask():
        while not stop.is_set():
            c.stats(); c.status
    askers = [threading.Thread(target=ask) for _ in range(2)]
    for t in askers:
        t.start()
    for i in range(15):
        c.commit()
        c.pause(); c.resume()
        c.update(pids_limit=100 + i)
    stop.set()
    for t in askers:
        t.join()
print("ok")
"""


def test_freezes_and_updates_race_with_other_threads_without_deadlock(
    rootfs: Path, tmp_path: Path
) -> None:
    """commit(), pause() and update() hold the container's cgroup while a healthcheck's execs
    and other threads ask for it. It deadlocked: one thread held the cgroup's lock and waited
    for the GIL, the other held the GIL and waited for the lock. Run in a child process, so a
    deadlock (which no signal handler can interrupt) fails the test instead of hanging it."""
    # Output to files, not pipes: a deadlocked owner's frozen exec would hold a pipe open.
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as o, err.open("w") as e:
        child = subprocess.Popen(
            [sys.executable, "-c", FREEZE_RACE, str(rootfs)], stdout=o, stderr=e
        )
    try:
        child.wait(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        # Its container stays frozen, and with it an exec the dead owner was cloning: thaw
        # them so that they can end.
        for state in Path("/sys/fs/cgroup/freezer").glob("pyrt-*/freezer.state"):
            state.write_text("THAWED")
        child.wait()
        pytest.fail(f"deadlocked: {err.read_text()!r}")
    assert child.returncode == 0, err.read_text()
    assert out.read_text().strip() == "ok"


@pytest.mark.parametrize("idle", [False, True], ids=["command", "idle"])
def test_init_takes_a_sigterm_sent_as_soon_as_start_returns(image: pyrt.Image, idle: bool) -> None:
    """pyrt's init (pid 1) blocks its signals before the caller hears "running": a pid 1 has
    its unblocked, unhandled signals dropped, so a SIGTERM right after start() would be lost,
    and wait() would never return."""
    from pyrt.config.idle import IDLE

    command = IDLE if idle else ["sleep", "600"]
    # Busy vCPUs make the child lose its CPU between "running" and its next step.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for _ in range(30):
            c = pyrt.Container(image, command, init=True).start()
            try:
                c.kill(signal.SIGTERM)
                assert c.wait(30) == -signal.SIGTERM
            finally:
                c.remove()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
