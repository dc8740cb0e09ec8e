"""The pure parts of a container's making, without starting one: option validation, the
command line's reading of `pyrt run`, and the builder of an exec's OCI process."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

import pyrt
from pyrt.cli import build_parser, container_from
from pyrt.config import options
from pyrt.oci.spec import Limits


def test_limits_are_checked_and_kept() -> None:
    assert options.limits(None, None, None) is None
    assert options.limits("64m", 10, 0.5) == Limits(64 << 20, 10, 0.5)
    assert options.limits(1 << 30, None, None) == Limits(1 << 30, None, None)
    for bad, err in [
        (("1k", None, None), pyrt.PyrtError),  # below what a container needs
        ((True, None, None), TypeError),
        ((None, 0, None), pyrt.PyrtError),
        ((None, 2.5, None), TypeError),
        ((None, None, math.nan), pyrt.PyrtError),
        ((None, None, (os.cpu_count() or 1) + 1), pyrt.PyrtError),
        ((None, None, "1"), TypeError),
    ]:
        with pytest.raises(err):
            options.limits(*bad)


def test_disk_is_refused_for_the_host_image() -> None:
    with pytest.raises(pyrt.PyrtError, match="disk"):
        options.disk("64m", "host")
    assert options.disk(None, "rootfs") is None


def parsed(*argv: str) -> pyrt.Container:
    return container_from(build_parser().parse_args(["run", *argv]))


def spec_of(c: pyrt.Container) -> dict[str, Any]:
    """The spec the container would start with. The spec builder needs the container's
    directory (its layers' paths go into the spec), so one is made, and removed after."""
    c._ensure_dir()
    try:
        return c.build_spec("/tmp")
    finally:
        c.remove()


def test_run_arguments_become_container_options() -> None:
    c = parsed(
        "-e", "A=1", "-e", "B=x=y", "-w", "/tmp", "-u", "0:0", "--hostname", "h",
        "--memory", "64m", "--pids-limit", "20", "--read-only", "--init", "--name", "n1",
        "--cap-drop", "KILL", "host", "sh", "-c", "true",
    )  # fmt: skip
    assert c.args == ["sh", "-c", "true"] and c.name == "n1"
    assert c.status == "created"  # nothing started
    doc = spec_of(c)
    proc = doc["process"]
    assert {"A=1", "B=x=y"} <= set(proc["env"]) and proc["cwd"] == "/tmp"
    assert doc["hostname"] == "h" and doc["root"]["readonly"] is True
    assert "CAP_KILL" not in proc["capabilities"]["bounding"]
    assert doc["linux"]["resources"]["memory"]["limit"] == 64 << 20
    assert doc["linux"]["resources"]["pids"]["limit"] == 20


def test_publishing_a_port_implies_a_private_network_and_tty_sets_term() -> None:
    proc = spec_of(parsed("-p", "8080", "-t", "host", "true"))["process"]
    assert proc["terminal"] is True and "TERM=xterm" in proc["env"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--memory"])  # a flag without its value


def test_the_exec_process_builder() -> None:
    """One builder for every exec: the container's process with the command, env, user and
    workdir of the exec laid over it (groups and umask kept)."""
    c = pyrt.Container(pyrt.Image.host(), ["sleep", "1"], env={"A": "1"}, workdir="/tmp")
    spec_of(c)  # the container's own process, which an exec's is laid over
    p = c._exec_process(["id"], {"B": "2"}, None, None)
    assert p["args"] == ["id"] and p["cwd"] == "/tmp"
    assert {"A=1", "B=2"} <= set(p["env"])
    root = c._exec_process(["id"], None, "0:0", "/")
    assert root["user"]["uid"] == 0 and root["user"]["gid"] == 0 and root["cwd"] == "/"
    assert any(e.startswith("HOME=") for e in root["env"])
    with pytest.raises(pyrt.PyrtError, match="absolute"):
        c._exec_process(["id"], None, None, "relative")
    with pytest.raises(pyrt.SpawnError):
        c._exec_process(["id"], None, "no-such-user-here", None)


def test_the_assembler_is_pure(tmp_path: Path) -> None:
    """assemble.container_spec makes nothing and keeps nothing: the same inputs give the same
    spec, and no file appears anywhere it was pointed at."""
    from pyrt.config.options import ContainerOptions
    from pyrt.oci import assemble

    image = pyrt.Image.host()
    o = ContainerOptions(env={"A": "1"}, workdir="/w", init=True, cap_drop=("KILL",))
    layers = assemble.Layers(lower=(str(tmp_path / "l"),), upper=str(tmp_path / "u"),
                             work=str(tmp_path / "w"))  # fmt: skip
    at = assemble.Placement(
        root_dir=str(tmp_path / "root"),
        layers=layers,
        limits=Limits(64 << 20, None, None),
        cgroup=True,
    )
    a = assemble.container_spec(o, image, "c" * 64, ["true"], at)
    b = assemble.container_spec(o, image, "c" * 64, ["true"], at)
    assert a == b and list(tmp_path.iterdir()) == []
    doc = a.config
    assert doc["process"]["args"] == ["true"] and doc["process"]["cwd"] == "/w"
    assert doc["annotations"]["run.pyrt.init"] == "true"
    assert doc["linux"]["cgroupsPath"] == "pyrt-" + "c" * 64
    assert a.seccomp is not None and a.process.args == ["true"]
    with pytest.raises(pyrt.PyrtError, match="absolute"):
        assemble.container_spec(ContainerOptions(workdir="rel"), image, "c", ["x"], at)


def test_one_exec_builder_keeps_what_the_exec_does_not_say() -> None:
    """`pyrt exec -u` once dropped the additional groups and the umask: every exec's process
    now comes from spec.exec_process, which keeps what the exec does not change."""
    from pyrt.config import users
    from pyrt.oci import spec

    base = {
        "args": ["sleep", "1"],
        "env": ["PATH=/bin", "A=1"],
        "cwd": "/srv",
        "user": {"uid": 0, "gid": 0, "umask": 0o027, "additionalGids": [10]},
        "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"],
                         "permitted": ["CAP_CHOWN"], "inheritable": [], "ambient": []},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
        "noNewPrivileges": True,
    }  # fmt: skip
    same = spec.exec_process(base, ["id"])
    assert same["user"] == base["user"] and same["cwd"] == "/srv" and same["args"] == ["id"]
    assert same["rlimits"] == base["rlimits"] and same["noNewPrivileges"] is True
    assert base["args"] == ["sleep", "1"]  # (the base is not changed)
    passwd = b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
    group = b"root:x:0:\napp:x:1000:\nwheel:x:10:app\naudio:x:29:root,app\n"
    ids = users.resolve("app", passwd, group)
    assert ids == users.UserIds(1000, 1000, (10, 29), "/home/app")
    p = spec.exec_process(base, ["id"], {"B": "2"}, ids, "/tmp")
    assert p["user"] == {"uid": 1000, "gid": 1000, "umask": 0o027, "additionalGids": [10, 29]}
    assert p["capabilities"]["effective"] == p["capabilities"]["permitted"] == []
    assert p["capabilities"]["bounding"] == ["CAP_CHOWN"]
    assert p["env"] == ["PATH=/bin", "A=1", "HOME=/home/app", "B=2"] and p["cwd"] == "/tmp"
    numeric = spec.exec_process(base, ["id"], None, users.resolve("4242:7", passwd, group))
    assert numeric["user"] == {"uid": 4242, "gid": 7, "umask": 0o027}
    back_to_root = spec.exec_process(p, ["id"], None, users.resolve("0", passwd, group))
    assert back_to_root["capabilities"]["effective"] == ["CAP_CHOWN"]
    with pytest.raises(ValueError, match="ghost"):
        users.resolve("ghost", passwd, group)
    with pytest.raises(ValueError, match="uid 99999999999999999999 is out of range"):
        users.resolve("99999999999999999999", passwd, group)
    with pytest.raises(ValueError, match="gid 4294967295 is out of range"):
        users.resolve("0:4294967295", passwd, group)
    with pytest.raises(pyrt.PyrtError, match="absolute"):
        spec.exec_process(base, ["id"], cwd="tmp")
