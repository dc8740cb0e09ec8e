"""The OCI runtime spec (runtime.md, config.md, config-linux.md of
https://github.com/opencontainers/runtime-spec), checked through the command line only, as an
orchestrator drives a runtime. Every test runs against pyrt-runc, crun and runc; each names the
clause it checks. Where a peer departs from the spec, the test records it as an expected
failure that names the clause (`spec_requires`); pyrt-runc must meet it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ocitools import Runtime, config, spec_requires, write_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the suite runs containers as root")


def run_probe(rt: Runtime, bundle: Path, script: str, **cfg: Any) -> tuple[int, str]:
    """`run` a shell script in the container; returns (exit status, its output)."""
    c = config(args=["/bin/sh", "-c", script])
    for k, v in cfg.items():
        if k == "linux":
            c["linux"].update(v)
        elif k == "process":
            c["process"].update(v)
        else:
            c[k] = v
    write_config(bundle, c)
    cid = rt.new_id()
    p = rt("run", "--bundle", str(bundle), cid, check=False)
    return p.returncode, p.stdout + p.stderr


# --- runtime.md: State, Lifecycle, Operations ---------------------------------------------------


def test_state_machine_created_running_stopped(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Lifecycle" 1-10 and "State": create leaves the container `created` with its
    process waiting, start makes it `running`, its exit makes it `stopped`, delete removes it."""
    write_config(bundle, config(args=["/bin/sh", "-c", "read x < /dev/null; sleep 0.3"]))
    cid = rt.new_id()
    p = rt.create(bundle, cid)
    assert p.returncode == 0, p.stderr
    st = rt.state(cid)
    assert st["status"] == "created"
    pid = int((bundle / "pid").read_text())
    assert st["pid"] == pid > 0
    # The user program has not run: the init is still the runtime's process image.
    assert os.path.exists(f"/proc/{pid}")
    rt("start", cid)
    assert rt.state(cid)["status"] == "running"
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"
    rt("delete", cid)
    gone = rt("state", cid, check=False)
    assert gone.returncode != 0


def test_state_json_fields(rt: Runtime, bundle: Path) -> None:
    """runtime.md "State": ociVersion, id, status, pid (created/running), bundle (absolute),
    annotations (those of config.json)."""
    c = config(args=["/bin/sleep", "10"])
    c["annotations"] = {"org.example.key": "value"}
    write_config(bundle, c)
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    st = rt.state(cid)
    assert st["ociVersion"]
    assert st["id"] == cid
    assert st["status"] == "created"
    assert st["pid"] == int((bundle / "pid").read_text())
    assert Path(st["bundle"]).is_absolute()
    assert Path(st["bundle"]).resolve() == bundle.resolve()
    assert st.get("annotations", {}).get("org.example.key") == "value"


def test_create_with_an_existing_id_fails(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Create": the runtime MUST generate an error if the ID is not unique, and the
    first container is untouched."""
    write_config(bundle, config(args=["/bin/sleep", "10"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    again = rt.create(bundle, cid, out=bundle / "out2.txt")
    assert again.returncode != 0
    assert rt.state(cid)["status"] == "created"


def test_start_of_a_container_not_created_fails(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Start": starting a container that is not `created` MUST have no effect and
    MUST generate an error."""
    write_config(bundle, config(args=["/bin/sleep", "10"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    assert rt("start", cid, check=False).returncode != 0
    assert rt.state(cid)["status"] == "running"
    rt("kill", cid, "KILL")
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"
    assert rt("start", cid, check=False).returncode != 0
    assert rt("start", "no-such-container", check=False).returncode != 0


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9"])
def test_kill_takes_names_and_numbers(rt: Runtime, bundle: Path, sig: str) -> None:
    """runtime.md "Kill": the signal reaches the container's process (runc's forms: KILL,
    SIGKILL, 9)."""
    write_config(bundle, config(args=["/bin/sleep", "30"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    rt("kill", cid, sig)
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"


def test_kill_in_each_state(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Kill": a `created` container can be signalled; one that is neither created
    nor running MUST have no effect and MUST generate an error."""
    write_config(bundle, config(args=["/bin/sleep", "30"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("kill", cid, "TERM")
    # A created container's init is the runtime's own code, which ends on SIGTERM or ignores it;
    # KILL ends it either way.
    rt("kill", cid, "KILL", check=False)
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"
    assert rt("kill", cid, "KILL", check=False).returncode != 0
    assert rt("kill", "no-such-container", "KILL", check=False).returncode != 0


def test_kill_all_reaches_every_process(rt: Runtime, bundle: Path) -> None:
    """`kill --all` (runc; containerd's StopContainer): every process of the container."""
    write_config(bundle, config(args=["/bin/sh", "-c", "sleep 30 & sleep 30 & wait"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    rt("kill", "--all", cid, "9")
    assert rt.wait_status(cid, "stopped")["status"] == "stopped"


def test_delete_in_each_state(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Delete": deleting a container that is not stopped MUST generate an error;
    a stopped one is removed with its resources. runc and crun delete a *created* container
    (killing it) where the spec asks for an error; pyrt-runc does as they do, since containerd
    and podman rely on it."""
    write_config(bundle, config(args=["/bin/sleep", "30"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    refused = rt("delete", cid, check=False)
    assert refused.returncode != 0
    assert rt.state(cid)["status"] == "running"
    pid = rt.state(cid)["pid"]
    rt("delete", "--force", cid)
    assert rt("state", cid, check=False).returncode != 0
    assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()
    # A created one: deleted (runc's behaviour), its process gone.
    cid2 = rt.new_id()
    assert rt.create(bundle, cid2, out=bundle / "out2.txt").returncode == 0
    rt("delete", cid2)
    assert rt("state", cid2, check=False).returncode != 0
    # A missing one: an error, but not with --force (containerd deletes twice).
    assert rt("delete", "no-such-container", check=False).returncode != 0
    assert rt("delete", "--force", "no-such-container", check=False).returncode == 0


def test_run_exit_codes(rt: Runtime, bundle: Path) -> None:
    """runc's `run`: the exit status is the container process's own, 128+N for a signal."""
    assert run_probe(rt, bundle, "exit 3")[0] == 3
    # A pid 1 ignores signals it has no handler for, even its own SIGKILL: a child's end.
    assert run_probe(rt, bundle, "sh -c 'kill -9 $$'; exit $?")[0] == 128 + signal.SIGKILL


# --- config.md: hooks ---------------------------------------------------------------------------


def _hook(log: Path, name: str) -> dict[str, Any]:
    return {
        "path": "/bin/sh",
        "args": ["sh", "-c", f"cat > {log}/{name}.json; echo {name} >> {log}/order"],
    }


def test_hooks_order_and_state(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config.md "POSIX-platform Hooks": createRuntime, createContainer, startContainer,
    poststart and poststop run in that order, each given the container's state on stdin;
    startContainer's path resolves in the container (hence the container's /bin/sh, and the log
    directory bound at the same path)."""
    log = tmp_path / "hooklog"
    log.mkdir()
    c = config(args=["/bin/sh", "-c", f"echo process >> {log}/order"])
    c["root"]["readonly"] = True
    c["mounts"].append(
        {"destination": str(log), "type": "bind", "source": str(log), "options": ["rbind"]}
    )
    names = ["createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
    c["hooks"] = {n: [_hook(log, n)] for n in names}
    write_config(bundle, c)
    cid = rt.new_id()
    p = rt.create(bundle, cid)
    assert p.returncode == 0, p.stderr
    pid = int((bundle / "pid").read_text())
    rt("start", cid)
    rt.wait_status(cid, "stopped")
    rt("delete", cid)
    order = (log / "order").read_text().split()
    # The process and poststart race (poststart runs after the process started); the rest
    # is ordered.
    assert sorted(o for o in order if o != "process") == sorted(names)
    assert order[:2] == ["createRuntime", "createContainer"]
    assert order.index("startContainer") < order.index("process")
    assert order[-1] == "poststop"
    spec_requires(
        rt,
        order.index("startContainer") < order.index("poststart"),
        "config.md poststart (after the user-specified process is executed)",
        f"poststart after startContainer, got {order}",
    )
    for n in names:
        st = json.loads((log / f"{n}.json").read_text())
        assert st["id"] == cid, n
        spec_requires(
            rt,
            Path(st["bundle"]).resolve() == bundle.resolve(),
            "runtime.md State (bundle, REQUIRED)",
            f"the {n} hook's state names the bundle, got {st['bundle']!r}",
        )
    first = json.loads((log / "createRuntime.json").read_text())
    spec_requires(
        rt, first["pid"] == pid, "config.md createRuntime", "the state's pid is the container's"
    )
    spec_requires(
        rt,
        first["status"] == "creating",
        "runtime.md State",
        f"status while create runs is 'creating', got {first['status']!r}",
    )
    post = json.loads((log / "poststop.json").read_text())
    spec_requires(
        rt, post["status"] == "stopped", "runtime.md State", "status at poststop is 'stopped'"
    )


def test_failing_create_hook_fails_create_and_leaves_nothing(rt: Runtime, bundle: Path) -> None:
    """config.md "createRuntime Hooks": if a hook fails, the runtime MUST generate an error and
    stop the container."""
    c = config(args=["/bin/sleep", "30"])
    c["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    write_config(bundle, c)
    cid = rt.new_id()
    p = rt.create(bundle, cid)
    assert p.returncode != 0
    st = rt("state", cid, check=False)
    if st.returncode == 0:
        spec_requires(
            rt,
            json.loads(st.stdout)["status"] == "stopped",
            "config.md createRuntime Hooks",
            "a failed hook stops the container",
        )


# --- config.md: process -----------------------------------------------------------------------


def test_process_args_env_cwd(rt: Runtime, bundle: Path) -> None:
    """config.md "Process": args (argv as given), env, cwd."""
    code, out = run_probe(
        rt,
        bundle,
        'printf "%s|" "$0" "$1"; echo "$GREETING"; pwd',
        process={
            "args": [
                "/bin/sh",
                "-c",
                'printf "%s|" "$0" "$1"; echo "$GREETING"; pwd',
                "zero",
                "a b",
            ],
            "env": ["PATH=/bin", "GREETING=hello world"],
            "cwd": "/tmp",
        },
    )
    assert code == 0, out
    assert out.splitlines()[:2] == ["zero|a b|hello world", "/tmp"]


def test_user_and_additional_gids(rt: Runtime, bundle: Path) -> None:
    """config.md "User": uid, gid and additionalGids are the process's."""
    code, out = run_probe(
        rt,
        bundle,
        "id -u; id -g; grep Groups /proc/self/status",
        process={"user": {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}},
    )
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1001"
    assert sorted(lines[2].split()[1:]) == ["10", "20"]


def test_capabilities(rt: Runtime, bundle: Path) -> None:
    """config.md "Capabilities": the process has exactly the sets given."""
    caps = ["CAP_CHOWN", "CAP_KILL"]
    code, out = run_probe(
        rt,
        bundle,
        "grep -E 'Cap(Eff|Prm|Bnd)' /proc/self/status",
        process={"capabilities": {"bounding": caps, "effective": caps, "permitted": caps}},
    )
    assert code == 0, out
    want = (1 << 0) | (1 << 5)
    for line in out.splitlines():
        assert int(line.split()[1], 16) == want, line


def test_rlimits(rt: Runtime, bundle: Path) -> None:
    """config.md "POSIX process": rlimits are set (soft and hard)."""
    code, out = run_probe(
        rt,
        bundle,
        "ulimit -Sn; ulimit -Hn",
        process={"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654}]},
    )
    assert code == 0, out
    assert out.split()[:2] == ["321", "654"]


# --- config.md / config-linux.md: mounts, namespaces, sysctl, devices, paths ---------------------


def test_mounts_tmpfs_and_readonly_bind(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config.md "Mounts": each is made at its destination with its options (a tmpfs with a
    size, a read-only bind)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("from the host")
    extra = [
        {"destination": "/mnt/t", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/mnt/b", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
    ]
    c = config(args=["/bin/sh", "-c", "grep -E ' /mnt/(t|b) ' /proc/mounts; cat /mnt/b/file; "
                     "echo x > /mnt/b/new && echo WROTE; true"])  # fmt: skip
    c["mounts"] += extra
    c["root"]["readonly"] = False
    write_config(bundle, c)
    p = rt("run", "--bundle", str(bundle), rt.new_id(), check=False)
    out = p.stdout
    assert p.returncode == 0, p.stderr
    assert " /mnt/t tmpfs " in out
    assert "from the host" in out
    assert "WROTE" not in out
    assert not (src / "new").exists()


def test_hostname_and_new_namespaces(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "Namespaces": each listed type is new; config.md "Hostname"."""
    code, out = run_probe(rt, bundle, "hostname; echo $$; readlink /proc/self/ns/net")
    assert code == 0, out
    host, pid, net = out.split()[:3]
    assert host == "conformance"
    assert pid == "1"
    assert net != os.readlink("/proc/self/ns/net")


def run_joined(
    rt: Runtime, bundle: Path, tmp_path: Path, ns_type: str, proc: str, script: str
) -> tuple[str, str]:
    """Starts a holder container (`sleep 31`), then runs ``script`` in a second one that joins
    the holder's ``ns_type`` namespace (``proc``: its /proc/PID/ns name) by path. Returns the
    holder's namespace (readlink) and the script's output."""
    write_config(bundle, config(args=["/bin/sleep", "31"]))
    holder = rt.new_id()
    assert rt.create(bundle, holder).returncode == 0
    rt("start", holder)
    hpid = rt.state(holder)["pid"]
    b2 = tmp_path / "b2"
    b2.mkdir()
    (b2 / "rootfs").symlink_to((bundle / "rootfs").resolve())
    c = config(args=["/bin/sh", "-c", script])
    for ns in c["linux"]["namespaces"]:
        if ns["type"] == ns_type:
            ns["path"] = f"/proc/{hpid}/ns/{proc}"
    write_config(b2, c)
    p = rt("run", "--bundle", str(b2), rt.new_id(), check=False)
    assert p.returncode == 0, p.stderr
    return os.readlink(f"/proc/{hpid}/ns/{proc}"), p.stdout


def test_namespace_joined_by_path(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config-linux.md "Namespaces": with a path, the container joins that namespace."""
    want, out = run_joined(rt, bundle, tmp_path, "network", "net", "readlink /proc/self/ns/net")
    assert out.strip() == want


def test_sysctl(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "Sysctl": set in the container's namespaces, even where /proc/sys is a
    read-only path."""
    code, out = run_probe(
        rt,
        bundle,
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni",
        linux={
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"},
            "readonlyPaths": ["/proc/sys"],
        },
    )
    assert code == 0, out
    assert out.split()[:2] == ["1", "1234"]


def test_devices(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "Devices": the node exists with its type, numbers, mode and owner."""
    dev = {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3,
           "fileMode": 0o620, "uid": 7, "gid": 8}  # fmt: skip
    code, out = run_probe(
        rt, bundle, "stat -c '%F %t %T %a %u %g' /dev/mynull", linux={"devices": [dev]}
    )
    assert code == 0, out
    assert out.strip().splitlines()[0] == "character special file 1 3 620 7 8"


def test_masked_and_readonly_paths(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "Masked Paths" (unreadable: empty) and "Readonly Paths" (not writable)."""
    code, out = run_probe(
        rt,
        bundle,
        "wc -c < /proc/cpuinfo; ls /proc/irq | wc -l; "
        "(echo 1 > /proc/sys/kernel/domainname) 2>/dev/null && echo WROTE; true",
        linux={"maskedPaths": ["/proc/cpuinfo", "/proc/irq"], "readonlyPaths": ["/proc/sys"]},
    )
    assert code == 0, out
    assert out.split()[:2] == ["0", "0"], out
    assert "WROTE" not in out


# --- runc's commands beyond the spec's operations ----------------------------------------------


def test_exec_with_process_json_and_ps(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """runc's `exec --process` (containerd's ExecSync) and `ps --format json`."""
    write_config(bundle, config(args=["/bin/sleep", "30"]))
    cid = rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({
        "args": ["/bin/sh", "-c", "echo exec:$WHO:$(hostname); exit 4"],
        "env": ["PATH=/bin", "WHO=me"], "cwd": "/", "user": {"uid": 0, "gid": 0},
    }))  # fmt: skip
    p = rt("exec", "--process", str(proc), cid, check=False)
    assert p.returncode == 4, p.stderr
    assert p.stdout.strip() == "exec:me:conformance"
    pids = json.loads(rt("ps", "--format", "json", cid).stdout)
    assert rt.state(cid)["pid"] in pids


def test_missing_executable_fails_at_create_or_start(rt: Runtime, bundle: Path) -> None:
    """runtime.md "Start": a process that cannot be executed MUST generate an error (runc and
    pyrt-runc report it at create already); the container does not run."""
    write_config(bundle, config(args=["/no/such/program"]))
    cid = rt.new_id()
    p = rt.create(bundle, cid)
    if p.returncode == 0:
        started = rt("start", cid, check=False)
        assert started.returncode != 0 or rt.wait_status(cid, "stopped")["status"] == "stopped"
    else:
        assert "/no/such/program" in p.stderr or "no such" in p.stderr.lower()


def test_device_cgroup_rules(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "Allowed Device list": the rules apply in order; after a deny-all, the
    devices every container needs still open (/dev/null), a host device bound in does not,
    and a rule allowing it lets it through (for reading only, as the rule says)."""
    assert os.path.exists("/dev/loop-control"), "the probe device (char 10:237) is missing"
    bind = {"destination": "/dev/lc", "type": "bind", "source": "/dev/loop-control",
            "options": ["bind"]}  # fmt: skip
    mounts = config()["mounts"] + [bind]
    probe = (
        "echo x > /dev/null && echo null-ok; "
        "(exec 3</dev/lc) 2>/dev/null && echo lc-read || echo lc-denied; "
        "(exec 3>/dev/lc) 2>/dev/null && echo lc-write || echo lc-no-write"
    )
    deny = [{"allow": False, "access": "rwm"}]
    code, out = run_probe(rt, bundle, probe, mounts=mounts, linux={"resources": {"devices": deny}})
    assert code == 0, out
    assert out.split() == ["null-ok", "lc-denied", "lc-no-write"], out
    read = {"allow": True, "type": "c", "major": 10, "minor": 237, "access": "r"}
    code, out = run_probe(
        rt, bundle, probe, mounts=mounts, linux={"resources": {"devices": [*deny, read]}}
    )
    assert code == 0, out
    assert out.split() == ["null-ok", "lc-read", "lc-no-write"], out


@pytest.mark.parametrize("mode,tag", [("shared", "shared:"), ("unbindable", "unbindable")])
def test_rootfs_propagation(rt: Runtime, bundle: Path, mode: str, tag: str) -> None:
    """config-linux.md "Rootfs Mount Propagation": the root mount has the propagation asked
    for (as /proc/self/mountinfo shows it from inside)."""
    code, out = run_probe(
        rt, bundle, "grep -E '^[0-9]+ [0-9]+ [^ ]+ [^ ]+ / ' /proc/self/mountinfo",
        linux={"rootfsPropagation": mode},
    )  # fmt: skip
    line = out.strip().splitlines()[-1] if out.strip() else ""
    optional = line.split(" - ")[0].split()[6:]
    ok = code == 0 and any(f.startswith(tag) for f in optional)
    spec_requires(rt, ok, 'config-linux.md "Rootfs Mount Propagation"', f"{mode}: {line[-300:]}")


def test_uts_namespace_joined_by_path_takes_the_hostname(
    rt: Runtime, bundle: Path, tmp_path: Path
) -> None:
    """config.md "Hostname" with a uts namespace given by path (a pod's containers join the
    sandbox's, each with the pod's hostname): the hostname is set in that namespace."""
    want, out = run_joined(
        rt, bundle, tmp_path, "uts", "uts", "readlink /proc/self/ns/uts; hostname"
    )
    assert out.split() == [want, "conformance"], out


def test_pid_namespace_joined_by_path(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config-linux.md "Namespaces": a pid namespace given by path is the one the process runs
    in (not only its children's), and it sees the processes already there."""
    script = "readlink /proc/self/ns/pid; ps -o args"
    want, out = run_joined(rt, bundle, tmp_path, "pid", "pid", script)
    lines = out.splitlines()
    assert lines[0] == want
    assert any("sleep 31" in ln for ln in lines[1:]), out


def test_user_namespace_from_the_spec(rt: Runtime, bundle: Path) -> None:
    """config-linux.md "User namespace mappings": the maps are in place before the root is
    prepared; the command is root inside, an id of the range outside, and what the host's root
    owns is nobody's inside."""
    # The mapped root must be able to reach the bundle (pytest's directories are 0700).
    for d in [*(bundle / "rootfs").resolve().parents, *bundle.parents]:
        if str(d).startswith("/tmp/"):
            d.chmod(0o755)
    ns = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user")]
    maps = [{"containerID": 0, "hostID": 300000, "size": 65536}]
    code, out = run_probe(
        rt, bundle, "id -u; cat /proc/self/uid_map; stat -c %u /bin",
        linux={"namespaces": ns, "uidMappings": maps, "gidMappings": maps},
    )  # fmt: skip
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "0" and lines[1].split() == ["0", "300000", "65536"], out
    assert lines[2] == "65534", out  # the host's root, unmapped


def _open_to_mapped_root(bundle: Path, *more: Path) -> None:
    """A user namespace's root must be able to reach the bundle and the mount sources
    (pytest's directories are 0700)."""
    for p in [bundle / "rootfs", bundle, *more]:
        for d in [*p.resolve().parents, p.resolve()]:
            if str(d).startswith("/tmp/"):
                d.chmod(0o755)


USERNS = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user")]
RANGE = [{"containerID": 0, "hostID": 300000, "size": 65536}]


def _owned_files(tmp_path: Path) -> Path:
    """A directory (owned by the host's root) with a file of root's and one of uid:gid 5:6."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "root-file").write_text("r")
    (src / "five").write_text("5")
    os.chown(src / "five", 5, 6)
    return src


def test_idmap_mount_takes_the_containers_mapping(
    rt: Runtime, bundle: Path, tmp_path: Path
) -> None:
    """config.md "Mounts", option `idmap` with no mappings of its own: the container's user
    namespace mapping applies, so the host's root owns the files as the container's root
    (without it they would be nobody's), and a file the container's root makes there belongs to
    the host's root."""
    src = _owned_files(tmp_path)
    _open_to_mapped_root(bundle, src)
    mnt = {
        "destination": "/tmp/data",
        "type": "bind",
        "source": str(src),
        "options": ["bind", "idmap"],
    }
    code, out = run_probe(
        rt, bundle, "stat -c '%u:%g' /tmp/data/root-file /tmp/data/five /bin; touch /tmp/data/made",
        mounts=[*config()["mounts"], mnt],
        linux={"namespaces": USERNS, "uidMappings": RANGE, "gidMappings": RANGE},
    )  # fmt: skip
    made = src / "made"
    owner = (made.stat().st_uid, made.stat().st_gid) if made.exists() else None
    ok = code == 0 and out.split() == ["0:0", "5:6", "65534:65534"] and owner == (0, 0)
    spec_requires(rt, ok, 'config.md "Mounts" idmap', f"{out[-300:]} made by {owner}")


def test_idmap_mount_with_its_own_mappings(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config.md "Mounts" `uidMappings`/`gidMappings`: the mount's own mapping (here without a
    user namespace: containerID 0 of the source's is shown as 1000), other ids unmapped."""
    src = _owned_files(tmp_path)
    small = [{"containerID": 0, "hostID": 1000, "size": 1}]
    mnt = {
        "destination": "/tmp/data", "type": "bind", "source": str(src),
        "options": ["bind", "idmap"], "uidMappings": small, "gidMappings": small,
    }  # fmt: skip
    code, out = run_probe(
        rt,
        bundle,
        "stat -c '%u:%g' /tmp/data/root-file /tmp/data/five",
        mounts=[*config()["mounts"], mnt],
    )
    ok = code == 0 and out.split() == ["1000:1000", "65534:65534"]
    spec_requires(rt, ok, 'config.md "Mounts" uidMappings', out[-300:])
    # The process that carried the mapping's user namespace is gone with it.
    holders = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", "1000", "1"]:
                holders.append(pid)
        except OSError:
            continue
    assert holders == [], holders


def test_ridmap_maps_the_mounts_below(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config.md "Mounts", `ridmap` on an `rbind`: a mount below the source is mapped too (with
    `idmap` only the top one is)."""
    src = _owned_files(tmp_path)
    below = src / "below"
    below.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "below", str(below)], check=True)
    try:
        (below / "f").write_text("x")
        _open_to_mapped_root(bundle, src)
        results = []
        for opt in ("idmap", "ridmap"):
            mnt = {"destination": "/tmp/data", "type": "bind", "source": str(src),
                   "options": ["rbind", opt]}  # fmt: skip
            code, out = run_probe(
                rt, bundle, "stat -c '%u' /tmp/data/root-file /tmp/data/below/f",
                mounts=[*config()["mounts"], mnt],
                linux={"namespaces": USERNS, "uidMappings": RANGE, "gidMappings": RANGE},
            )  # fmt: skip
            results.append((code, out.split()))
    finally:
        subprocess.run(["umount", "-l", str(below)], check=False)
    ok = results == [(0, ["0", "65534"]), (0, ["0", "0"])]
    spec_requires(rt, ok, 'config.md "Mounts" ridmap', repr(results))


def test_recursive_mount_options(rt: Runtime, bundle: Path, tmp_path: Path) -> None:
    """config.md "Mounts", the recursive options (`rro`, `rnosuid`): applied to the bind and
    every mount below it, where `ro` alone leaves a submount writable."""
    src = tmp_path / "rsrc"
    below = src / "below"
    below.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "below", str(below)], check=True)
    try:
        mnt = {"destination": "/tmp/data", "type": "bind", "source": str(src),
               "options": ["rbind", "rro", "rnosuid"]}  # fmt: skip
        code, out = run_probe(
            rt, bundle,
            "touch /tmp/data/below/x 2>/dev/null && echo wrote || echo ro;"
            " grep ' /tmp/data/below ' /proc/self/mountinfo | cut -d' ' -f6",
            mounts=[*config()["mounts"], mnt],
        )  # fmt: skip
    finally:
        subprocess.run(["umount", "-l", str(below)], check=False)
    lines = out.split()
    ok = code == 0 and lines[:1] == ["ro"] and "nosuid" in (lines[1] if len(lines) > 1 else "")
    spec_requires(rt, ok, 'config.md "Mounts" rro, rnosuid', out[-300:])


@pytest.mark.parametrize(
    "mode,seen", [("rslave", "seen"), ("slave", "seen"), ("private", "unseen")]
)
def test_rootfs_propagation_receives_the_hosts_mounts(
    rt: Runtime, rootfs: Path, tmp_path: Path, mode: str, seen: str
) -> None:
    """config-linux.md "Rootfs Mount Propagation", slave: a mount the host makes under the
    container's root after the start shows inside (and with private, it does not). The root is
    on a shared tmpfs, as a host with systemd has it."""
    top = tmp_path / "shared"
    top.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "pyrt-prop", str(top)], check=True)
    late = top / "rootfs" / "mnt" / "late"
    try:
        subprocess.run(["mount", "--make-shared", str(top)], check=True)
        subprocess.run(["cp", "-a", f"{rootfs}/.", str(top / "rootfs")], check=True)
        late.mkdir(parents=True, exist_ok=True)
        b = tmp_path / "b"
        b.mkdir()
        script = (
            "for i in $(seq 200); do grep -q ' /mnt/late ' /proc/self/mountinfo"
            " && { echo seen; exit 0; }; sleep 0.02; done; echo unseen"
        )
        cfg = config(args=["/bin/sh", "-c", script])
        cfg["root"]["path"] = str(top / "rootfs")
        cfg["linux"]["rootfsPropagation"] = mode
        write_config(b, cfg)
        cid = rt.new_id()
        p = rt.create(b, cid)
        assert p.returncode == 0, p.stderr
        rt("start", cid)
        subprocess.run(["mount", "-t", "tmpfs", "late", str(late)], check=True)
        rt.wait_status(cid, "stopped")
        out = (b / "out.txt").read_text().strip()
    finally:
        subprocess.run(["umount", "-R", "-l", str(top)], check=False)
    spec_requires(rt, out == seen, 'config-linux.md "Rootfs Mount Propagation"', f"{mode}: {out}")


def _owner_userns(path: str) -> int:
    """The inode of the user namespace that owns the namespace at ``path`` (NS_GET_USERNS)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, 0xB701)  # NS_GET_USERNS: a new descriptor
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


def _started(rt: Runtime, bundle: Path, secs: str, ns: list[dict[str, str]], cid: str = "") -> int:
    """A started container of ``bundle`` running ``sleep secs`` in the mapped range (``RANGE``)
    with namespaces ``ns``; its pid."""
    _open_to_mapped_root(bundle)
    cfg = config(args=["/bin/sleep", secs])
    cfg["linux"].update(namespaces=ns, uidMappings=RANGE, gidMappings=RANGE)
    write_config(bundle, cfg)
    cid = cid or rt.new_id()
    assert rt.create(bundle, cid).returncode == 0
    rt("start", cid)
    return int(rt.state(cid)["pid"])


def test_user_namespace_joined_by_path_owns_the_new_namespaces(
    rt: Runtime, bundle: Path, tmp_path: Path
) -> None:
    """config-linux.md "Namespaces" with a user namespace given by path (a Kubernetes pod's
    containers join the sandbox's): the container runs in it, as its root, and the namespaces
    it makes belong to it (so that its root may mount /proc and the rest in them)."""
    # The mappings in both (runc 1.1 wants them again when the namespace is joined; the spec
    # allows them, as long as they are the joined namespace's).
    hpid = _started(rt, bundle, "31", USERNS)
    ns = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    ns.append({"type": "user", "path": f"/proc/{hpid}/ns/user"})
    b2 = tmp_path / "b2"
    b2.mkdir()
    (b2 / "rootfs").symlink_to((bundle / "rootfs").resolve())
    joiner = rt.new_id()
    jpid = _started(rt, b2, "32", ns, joiner)
    probe = rt("exec", joiner, "/bin/sh", "-c", "id -u; cat /proc/self/uid_map; stat -c %u /bin")
    probe = probe.stdout
    lines = probe.splitlines()
    want = os.stat(f"/proc/{hpid}/ns/user").st_ino
    assert os.stat(f"/proc/{jpid}/ns/user").st_ino == want
    assert lines[0] == "0" and lines[1].split() == ["0", "300000", "65536"], probe
    assert lines[2] == "65534", probe
    owners = {t: _owner_userns(f"/proc/{jpid}/ns/{t}") for t in ("mnt", "pid", "net", "uts", "ipc")}
    assert set(owners.values()) == {want}, owners
    # Its own namespaces, not the holder's.
    assert os.readlink(f"/proc/{jpid}/ns/mnt") != os.readlink(f"/proc/{hpid}/ns/mnt")
    assert os.readlink(f"/proc/{jpid}/ns/pid") != os.readlink(f"/proc/{hpid}/ns/pid")
