"""What pyrt-runc promises beyond the spec's operations: runc's global flags as containerd and
podman pass them, its errors, `spec`, `features` and `list`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ocitools import BASE_CONFIG, Runtime, _pyrt_runc, write_config
from usertools import SETPRIV, public_dir, subid_user

IDS = [{"containerID": 0, "hostID": 100000, "size": 65536}]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs containers as root")


@pytest.fixture
def prt(tmp_path: Path) -> Runtime:
    return Runtime("pyrt-runc", _pyrt_runc(), tmp_path / "state")


def test_systemd_cgroup_without_systemd_is_a_clear_error(prt: Runtime, bundle: Path) -> None:
    """`--systemd-cgroup` where systemd does not run (this machine): create fails at once,
    saying where it looked and what to use instead, and leaves nothing."""
    p = prt("--systemd-cgroup", "run", "--bundle", str(bundle), "nosd", check=False)
    assert p.returncode == 1
    assert "/run/systemd/private" in p.stderr and "cgroupfs" in p.stderr, p.stderr
    assert prt("list", "-q").stdout.strip() == ""


def test_errors_go_to_the_json_log(prt: Runtime, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    p = prt("--log", str(log), "--log-format", "json", "start", "nothing-here", check=False)
    assert p.returncode == 1
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["level"] == "error"
    assert "nothing-here" in last["msg"]
    assert last["time"].endswith("Z")


def test_create_failure_names_the_cause_and_leaves_nothing(
    prt: Runtime, rootfs: Path, tmp_path: Path
) -> None:
    b = tmp_path / "b"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["process"]["args"] = ["/no/such/program"]
    write_config(b, cfg)
    p = prt.create(b, "bad")
    assert p.returncode == 1
    assert "/no/such/program" in p.stderr
    assert prt("list", "-q").stdout.strip() == ""
    assert not any(Path("/sys/fs/cgroup").glob("*/pyrt-runc-bad"))


def test_a_created_container_runs_the_small_embedded_child(
    prt: Runtime, rootfs: Path, tmp_path: Path
) -> None:
    """pyrt-runc starts containers from the pyrt-child image it embeds (the same the Python
    extension embeds), not from a copy of its own, larger binary."""
    from pyrt import _core

    b = tmp_path / "b"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    write_config(b, json.loads(json.dumps(BASE_CONFIG)))
    assert prt.create(b, "small").returncode == 0
    try:
        pid = prt.state("small")["pid"]
        exe = os.readlink(f"/proc/{pid}/exe")
        assert exe.startswith("/memfd:pyrt-child"), exe
        size = os.stat(f"/proc/{pid}/exe").st_size
        assert size == _core.CHILD_SIZE
        assert size < os.stat(prt.binary).st_size / 2
    finally:
        prt("delete", "--force", "small", check=False)


def test_bad_id_and_spec_and_features_and_list(prt: Runtime, tmp_path: Path) -> None:
    assert prt("state", "../etc", check=False).returncode == 1
    b = tmp_path / "spec"
    b.mkdir()
    subprocess.run([prt.binary, "spec", "--bundle", str(b)], check=True)
    cfg = json.loads((b / "config.json").read_text())
    assert cfg["root"]["path"] == "rootfs" and cfg["process"]["args"] == ["sh"]
    again = subprocess.run([prt.binary, "spec", "--bundle", str(b)], capture_output=True)
    assert again.returncode == 1
    f = json.loads(subprocess.run([prt.binary, "features"], capture_output=True).stdout)
    assert f["linux"]["mountExtensions"]["idmap"]["enabled"] is True  # Linux >= 5.12
    assert {"idmap", "ridmap", "rro", "rnosuid"} <= set(f["mountOptions"])
    assert f["linux"]["cgroup"]["systemd"] is True
    assert f["ociVersionMin"] and "createContainer" in f["hooks"]
    assert "CAP_SYS_ADMIN" in f["linux"]["capabilities"]
    assert json.loads(prt("list", "--format", "json").stdout) == []


def test_console_socket_receives_the_pty(prt: Runtime, rootfs: Path, tmp_path: Path) -> None:
    """`--console-socket` (containerd's `ctr run -t`): the pty master arrives over the socket
    and the container's output comes through it."""
    import array
    import socket

    b = tmp_path / "b"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["process"]["terminal"] = True
    cfg["process"]["args"] = ["/bin/sh", "-c", "tty; echo on-the-pty"]
    write_config(b, cfg)
    path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    p = subprocess.Popen(
        prt.cmd("create", "--bundle", str(b), "--console-socket", path, "tty1"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    conn, _ = srv.accept()
    fds = array.array("i")
    _msg, anc, _f, _a = conn.recvmsg(16, socket.CMSG_LEN(fds.itemsize))
    fds.frombytes(anc[0][2][: fds.itemsize])
    assert p.wait(10) == 0, p.stderr.read() if p.stderr else ""
    master = fds[0]
    prt("start", "tty1")
    out = b""
    while b"on-the-pty" not in out:
        try:
            chunk = os.read(master, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    conn.close()
    srv.close()
    assert b"/dev/pts/0" in out and b"on-the-pty" in out
    prt("delete", "--force", "tty1")


@pytest.mark.parametrize(
    "extra,field,words",
    [
        ({"type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}, "mounts[4].options", "bind"),
        ({"options": ["bind", "idmap"]}, "mounts[4].options", "user namespace"),
        ({"options": ["bind"], "uidMappings": IDS}, "mounts[4].gidMappings", "uidMappings"),
        ({"options": ["bind"], "uidMappings": [], "gidMappings": []}, "uidMappings", "mappings"),
    ],
)
def test_an_idmapped_mount_that_cannot_be_made_is_refused_by_name(
    prt: Runtime, rootfs: Path, tmp_path: Path, extra: dict[str, object], field: str, words: str
) -> None:
    """An idmapped mount that is not a bind, that takes the container's mapping when there is
    no user namespace, or whose mappings are half or empty: refused at create, naming the
    field, rather than mounted with the wrong owners. Nothing is left behind."""
    b = tmp_path / "b"
    b.mkdir()
    (b / "rootfs").symlink_to(rootfs)
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["mounts"].append(
        {"destination": "/tmp/m", "type": "bind", "source": str(tmp_path), **extra}
    )
    write_config(b, cfg)
    p = prt.create(b, "idmapped")
    assert p.returncode == 1
    assert field in p.stderr and words in p.stderr, p.stderr
    assert prt("list", "-q").stdout.strip() == ""


V2_MOUNT = "/sys/fs/cgroup/unified"


@pytest.mark.skipif(
    not os.path.exists(os.path.join(V2_MOUNT, "cgroup.procs")),
    reason="needs a cgroup2 hierarchy at /sys/fs/cgroup/unified (hybrid layout)",
)
def test_device_rules_on_cgroup_v2(
    prt: Runtime, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On cgroup v2 the device rules are a BPF program attached to the container's cgroup
    (told to use this hybrid machine's unified tree): after a deny-all, /dev/null opens, a host
    device bound in does not, and a rule allowing it for reading lets only reading through."""
    from test_runtime_spec import run_probe

    monkeypatch.setenv("PYRT_CGROUP_V2_MOUNT", V2_MOUNT)
    bind = {"destination": "/dev/lc", "type": "bind", "source": "/dev/loop-control",
            "options": ["bind"]}  # fmt: skip
    mounts = [*BASE_CONFIG["mounts"], bind]
    probe = (
        "echo x > /dev/null && echo null-ok; "
        "(exec 3</dev/lc) 2>/dev/null && echo lc-read || echo lc-denied; "
        "(exec 3>/dev/lc) 2>/dev/null && echo lc-write || echo lc-no-write; "
        "cat /proc/self/cgroup"
    )
    deny = [{"allow": False, "access": "rwm"}]
    read = {"allow": True, "type": "c", "major": 10, "minor": 237, "access": "r"}
    for rules, want in (
        (deny, ["null-ok", "lc-denied", "lc-no-write"]),
        ([*deny, read], ["null-ok", "lc-read", "lc-no-write"]),
    ):
        code, out = run_probe(prt, bundle, probe, mounts=mounts,
                              linux={"resources": {"devices": rules}})  # fmt: skip
        assert code == 0, out
        lines = out.split()
        assert lines[:3] == want, out
        assert any(ln.startswith("0::/pyrt-runc-") for ln in lines[3:]), out  # the v2 tree


@pytest.fixture
def subid_bundle(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """pyrt-ci's uid and gid, and a bundle it can use (a world-readable busybox root)."""
    who = subid_user()
    assert who, "pyrt-ci with a /etc/subuid range is missing (.ci/run / scripts/setup make it)"
    for public in public_dir():
        b = public / "bundle"
        b.mkdir()
        os.chown(b, *who)
        yield who[0], who[1], b


def test_rootless_create_start_with_a_subordinate_range(
    subid_bundle: tuple[int, int, Path],
) -> None:
    """config-linux.md "User namespace mappings" for a caller that is not root: the container's
    root is the first id of the caller's /etc/subuid range (written by newuidmap), and the
    whole create, state, start, delete round works (the start gate is the caller's socket,
    handed to the container, which could not reach the caller's state directory)."""
    uid, gid, b = subid_bundle
    subuid = Path("/etc/subuid").read_text().splitlines()
    sub = next(int(x.split(":")[1]) for x in subuid if x.startswith("pyrt-ci:"))
    ids = [{"containerID": 0, "hostID": sub, "size": 65536}]
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["root"] = {"path": str(b.parent / "rootfs"), "readonly": True}
    cfg["process"]["args"] = ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map; stat -c %u /bin"]
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"].update(uidMappings=ids, gidMappings=ids)
    (b / "config.json").write_text(json.dumps(cfg))
    state = b / "state"
    user = [SETPRIV or "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    rt = [*user, _pyrt_runc(), "--root", str(state)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*rt, *args], capture_output=True, text=True, timeout=30, cwd=b)

    # The container's stdio in files: a pipe would stay open for as long as it runs.
    out, err = b / "out.txt", b / "err.txt"
    with open(out, "w") as f, open(err, "w") as e:
        for p in (out, err):
            os.chown(p, uid, gid)
        created = subprocess.run(
            [*rt, "create", "--bundle", str(b), "sub"], stdout=f, stderr=e, timeout=30, cwd=b
        )
    assert created.returncode == 0, err.read_text()
    assert json.loads(run("state", "sub").stdout)["status"] == "created"
    assert run("start", "sub").returncode == 0
    for _ in range(500):
        if json.loads(run("state", "sub").stdout)["status"] == "stopped":
            break
    lines = out.read_text().splitlines()
    assert lines[0] == "0", lines
    assert lines[1].split() == ["0", str(sub), "65536"], lines
    assert lines[2] == "65534", lines  # the host's root owns /bin: nobody inside
    assert run("delete", "sub").returncode == 0
    assert os.listdir(state) == []
