"""pyrt.build and Image.push with real tools: the same Containerfile built by buildah and by
pyrt gives the same config and the same tree (both unpacked by umoci); the cache; a push to a
real docker-registry read back by skopeo and pulled again; hostile contexts; rootless builds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagetools import HAVE_BUILDAH, HAVE_REGISTRY, HAVE_UMOCI, registry, run
from usertools import NEEDS_SETPRIV, NOBODY, as_user, public_dir, subid_user

import pyrt
import pyrt.image.push as pyrt_push
from helpers import assert_nothing_left_of, snapshot
from pyrt.oci.spec import DEFAULT_PATH

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store of the test's own, so cache hits and misses are this test's."""
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    return tmp_path / "store"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


# --- the same file as buildah --------------------------------------------------------------

EVERY_INSTRUCTION = """\
# syntax=docker/dockerfile:1
ARG BASE
FROM $BASE AS builder
ARG VERSION=1.0
RUN mkdir -p /out && echo "built $VERSION" > /out/version && chmod 0640 /out/version
SHELL ["/bin/sh", "-ec"]
RUN echo shell-form > /out/shell
RUN ["/bin/sh", "-c", "echo exec-form > /out/exec"]

FROM $BASE AS unused
RUN exit 1

FROM $BASE
ARG VERSION
ENV APP_HOME=/srv/app \\
    PATH=/usr/local/bin:/bin
WORKDIR $APP_HOME
COPY one.txt ./
COPY dir/ ./dir/
COPY --chown=1000:1000 one.txt /owned/one.txt
COPY --chmod=0600 one.txt /secret.txt
COPY --from=builder /out/ /opt/out/
COPY --from=builder /out/version /opt/version-file
ADD bundle.tar.gz /unpacked/
ADD one.txt /added-one.txt
RUN echo "v=$VERSION" > /srv/app/version
USER app
EXPOSE 8080 9000/udp
LABEL org.example.name="demo app" version=$VERSION
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=2 CMD test -f /srv/app/version
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/app/version"]
"""


def every_instruction_context(d: Path) -> Path:
    write(
        d,
        {
            "Containerfile": EVERY_INSTRUCTION,
            "one.txt": "one\n",
            "dir/two.txt": "two\n",
            "dir/nested/n.txt": "n\n",
            "junk.log": "left out\n",
            ".dockerignore": "*.log\n",
        },
    )
    os.chmod(d / "dir/nested/n.txt", 0o600)
    os.symlink("two.txt", d / "dir/link")
    src = d.parent / "tarsrc"
    write(src, {"t/file": "in a tarball\n"})
    with tarfile.open(d / "bundle.tar.gz", "w:gz") as tf:
        tf.add(src / "t", arcname="t")
    shutil.rmtree(src)
    return d


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: type and mode, owner, and content digest or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(d) / n
            st = p.lstat()
            what: Any = None
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            out[str(p.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def layout_config(layout: Path) -> dict[str, Any]:
    blob = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blob / index["manifests"][0]["digest"][7:]).read_text())
    cfg: dict[str, Any] = json.loads((blob / manifest["config"]["digest"][7:]).read_text())
    return cfg


#: What buildah's RUN leaves in a layer and Docker's does not: the mount points of its /etc
#: files and its /run. pyrt's commit leaves empty mount points out, as Docker does.
BUILDAH_RUN_ARTIFACTS = {"etc/hostname", "etc/hosts", "etc/resolv.conf", "run"}

COMPARED = ["Entrypoint", "Cmd", "WorkingDir", "User", "ExposedPorts", "Healthcheck",
            "StopSignal", "Volumes"]  # fmt: skip


@needs_root
@pytest.mark.skipif(not (HAVE_BUILDAH and HAVE_UMOCI), reason="needs buildah and umoci")
def test_same_config_and_tree_as_buildah(tmp_path: Path, store: Path, rootfs: Path) -> None:
    base = tmp_path / "base"
    g = ["buildah", "--root", str(tmp_path / "storage"), "--runroot", str(tmp_path / "run"),
         "--storage-driver", "vfs"]  # fmt: skip
    ctx = every_instruction_context(tmp_path / "ctx")
    try:
        ctr = run(*g, "from", "scratch").strip()
        run(*g, "copy", ctr, f"{rootfs}/", "/")
        run(*g, "commit", "-q", ctr, f"oci:{base}:bb")
        run(*g, "rm", ctr)
        # crun refuses this machine's hybrid cgroups: buildah's RUN goes through runc.
        run(
            *g,
            "bud",
            "--runtime",
            "runc",
            "--format",
            "docker",
            "--build-arg",
            f"BASE=oci:{base}:bb",
            "--build-arg",
            "VERSION=2.5",
            "-t",
            "cmp:1",
            str(ctx),
        )
        theirs_cfg = json.loads(run(*g, "inspect", "--type", "image", "cmp:1"))["Docker"]["config"]
        run(*g, "push", "cmp:1", f"oci:{tmp_path / 'theirs'}:cmp")
    finally:
        subprocess.run([*g, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(tmp_path / "storage", ignore_errors=True)

    img = pyrt.build(ctx, build_args={"BASE": str(base), "VERSION": "2.5"}, tag="cmp:1")
    img.save(tmp_path / "ours")
    ours_cfg = layout_config(tmp_path / "ours")["config"]

    for k in COMPARED:
        assert ours_cfg.get(k) == theirs_cfg.get(k), k
    assert dict(e.split("=", 1) for e in ours_cfg["Env"]) == dict(
        e.split("=", 1) for e in theirs_cfg["Env"]
    )
    buildah_label = {"io.buildah.version"}
    assert (
        {k: v for k, v in ours_cfg["Labels"].items() if k not in buildah_label}
        == {k: v for k, v in theirs_cfg["Labels"].items() if k not in buildah_label}
        == {"org.example.name": "demo app", "version": "2.5"}
    )
    assert ours_cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "test -f /srv/app/version"]

    run("umoci", "unpack", "--image", f"{tmp_path / 'theirs'}:cmp", str(tmp_path / "ub"))
    run("umoci", "unpack", "--image", f"{tmp_path / 'ours'}:1", str(tmp_path / "ub2"))
    theirs = {k: v for k, v in tree(tmp_path / "ub/rootfs").items()
              if k not in BUILDAH_RUN_ARTIFACTS}  # fmt: skip
    ours = tree(tmp_path / "ub2/rootfs")
    assert ours == theirs
    # What the comparison covers, so that an empty tree cannot pass it.
    assert ours["srv/app/version"][3] == hashlib.sha256(b"v=2.5\n").hexdigest()
    assert ours["owned/one.txt"][1:3] == (1000, 1000) and ours["owned"][1:3] == (1000, 1000)
    assert ours["secret.txt"][0] == "-rw-------"
    assert ours["opt/out/version"][0] == "-rw-r-----"
    assert ours["srv/app/dir/link"][3] == "two.txt"
    assert "unpacked/t/file" in ours and "junk.log" not in ours["srv/app"]
    assert pyrt.run(img).stdout == b"v=2.5\n"


# --- behaviour ---------------------------------------------------------------------------------


@pytest.fixture
def base(rootfs: Path) -> dict[str, str]:
    return {"BASE": str(rootfs)}


def test_cache_hits_and_reruns_from_the_changed_step(
    tmp_path: Path, store: Path, base: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    steps = [
        "ARG BASE", "FROM $BASE", "COPY a.txt /a", "RUN cat /proc/uptime > /t1",
        "COPY b.txt /b", "RUN cat /proc/uptime > /t2", 'CMD ["cat", "/t1", "/t2"]',
    ]  # fmt: skip
    ctx = write(tmp_path / "ctx", {"Containerfile": "\n".join(steps) + "\n",
                                   "a.txt": "a\n", "b.txt": "b\n"})  # fmt: skip
    first = pyrt.build(ctx, build_args=base, progress=True)
    capfd.readouterr()
    again = pyrt.build(ctx, build_args=base, progress=True)
    err = capfd.readouterr().err
    assert again.id == first.id
    assert err.count("--> cached") == 4  # every layer step, none run
    t1, t2 = pyrt.run(first, text=True).stdout.splitlines()

    (ctx / "b.txt").write_text("b changed\n")
    changed = pyrt.build(ctx, build_args=base, progress=True)
    err = capfd.readouterr().err
    assert changed.id != first.id
    assert err.count("--> cached") == 2  # COPY a.txt and the first RUN
    n1, n2 = pyrt.run(changed, text=True).stdout.splitlines()
    assert n1 == t1 and n2 != t2  # the RUN after the changed COPY ran again
    assert pyrt.run(changed, ["cat", "/b"]).stdout == b"b changed\n"
    # A touched file with the same content is the same input.
    os.utime(ctx / "a.txt", (1, 1))
    assert pyrt.build(ctx, build_args=base).id == changed.id


def test_gc_takes_untagged_builds_and_their_cache(
    tmp_path: Path, store: Path, base: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nRUN touch /x\n"})
    tagged = pyrt.build(ctx, build_args=base, tag="kept:1")
    (ctx / "Containerfile").write_text("ARG BASE\nFROM $BASE\nRUN touch /y\n")
    pyrt.build(ctx, build_args=base)  # untagged
    env = {**os.environ, "PYRT_ROOT": str(store), "PYRT_GC_GRACE": "0"}
    gc = subprocess.run([sys.executable, "-m", "pyrt", "gc"], env=env, capture_output=True,
                        text=True)  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.count("build-cache ") >= 1
    capfd.readouterr()
    pyrt.build(ctx, build_args=base, progress=True)
    assert "--> cached" not in capfd.readouterr().err  # its layer was collected: it ran again
    (ctx / "Containerfile").write_text("ARG BASE\nFROM $BASE\nRUN touch /x\n")
    assert pyrt.build(ctx, build_args=base, progress=True).id == tagged.id
    assert "--> cached" in capfd.readouterr().err  # a tagged image's layers stay


def test_args_targets_stages_and_dockerignore(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    ctx = write(tmp_path / "ctx", {
        "Dockerfile": "ARG BASE\nARG WHO=world\nFROM $BASE AS first\nARG WHO\n"
                      "RUN echo \"hello $WHO\" > /greeting\n"
                      "FROM $BASE AS broken\nRUN exit 7\n"
                      "FROM first AS second\nCOPY . /ctx/\nENV E=$WHO\nARG WHO\nENV F=$WHO\n",
        "keep.txt": "k\n", "skip.tmp": "s\n", "sub/skip.tmp": "s\n", "sub/again.tmp": "a\n",
        ".dockerignore": "*.tmp\n**/*.tmp\n!sub/again.tmp\n"})  # fmt: skip
    img = pyrt.build(ctx, build_args={**base, "WHO": "pyrt"}, tag="stages:1")
    assert pyrt.Image.get("stages:1").id == img.id
    out = pyrt.run(
        img, ["sh", "-c", "cat /greeting; ls -A /ctx /ctx/sub; echo E=$E F=$F"], text=True
    )
    assert out.stdout.split() == [
        "hello",
        "pyrt",
        "/ctx:",
        ".dockerignore",
        "Dockerfile",
        "keep.txt",
        "sub",
        "/ctx/sub:",
        "again.tmp",
        "E=",
        "F=pyrt",
    ]
    # The stage that fails was never built; a target stops early.
    first = pyrt.build(ctx, build_args=base, target="first")
    assert pyrt.run(first, ["cat", "/greeting"]).stdout == b"hello world\n"
    with pytest.raises(pyrt.BuildError, match=r"Dockerfile:7: RUN exit 7: .*status 7") as e:
        pyrt.build(ctx, build_args=base, target="broken")
    assert e.value.returncode == 7 and e.value.line == 7
    with pytest.raises(pyrt.BuildError, match="target stage 'nope' is not defined"):
        pyrt.build(ctx, build_args=base, target="nope")


def test_failing_run_shows_its_output_and_leaves_nothing(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    ctx = write(
        tmp_path / "ctx",
        {
            "Containerfile": "ARG BASE\nFROM $BASE\n"
            "RUN echo to-stdout && echo to-stderr >&2 && exit 3\n"
        },
    )
    before = snapshot()
    with pytest.raises(pyrt.BuildError) as e:
        pyrt.build(ctx, build_args=base)
    assert e.value.file.endswith("Containerfile") and e.value.line == 3
    assert e.value.returncode == 3
    assert b"to-stdout" in (e.value.output or b"") and b"to-stderr" in (e.value.output or b"")
    assert "to-stderr" in str(e.value) and ":3: RUN echo" in str(e.value)
    after = snapshot()
    assert after["state"] == before["state"] and after["mounts"] == before["mounts"]
    assert not (store / "tmp").exists() or os.listdir(store / "tmp") == []


def test_built_config_drives_containers(tmp_path: Path, store: Path, base: dict[str, str]) -> None:
    """RUN has network="private"; the image's HEALTHCHECK and STOPSIGNAL are what its
    containers use; RUN's /etc mount points are not left in the image."""
    ctx = write(tmp_path / "ctx", {"Containerfile": "\n".join([
        "ARG BASE", "FROM $BASE",
        "RUN cat /etc/resolv.conf > /resolv-at-build && ip -4 addr > /addr-at-build",
        "HEALTHCHECK --interval=1s --retries=30 CMD test -f /tmp/ready",
        "STOPSIGNAL SIGUSR1",
        "CMD [\"sh\", \"-c\", \"trap 'echo got-usr1; exit 0' USR1; touch /tmp/ready; "
        "while true; do sleep 0.05; done\"]",
    ]) + "\n"})  # fmt: skip
    img = pyrt.build(ctx, build_args=base)
    assert b"nameserver 10.0.2.3" in (img.read_file("/resolv-at-build") or b"")
    assert b"10.0.2.100" in (img.read_file("/addr-at-build") or b"")
    assert img.read_file("/etc/resolv.conf") is None and img.read_file("/etc/hosts") is None
    with pyrt.Container(img) as c:
        c.wait_for_healthy(timeout=30)
        assert c.health == "healthy"
        assert c.stop_signal == int(signal.SIGUSR1)
        assert c.stop(timeout=20) == 0
        assert b"got-usr1" in c.logs()


def test_from_scratch(tmp_path: Path, store: Path) -> None:
    ctx = write(tmp_path / "ctx", {"f": "data\n", "Containerfile":
        "FROM scratch\nCOPY --chown=5:6 f /data/f\nENV A=1\nCMD [\"/app\"]\n"})  # fmt: skip
    img = pyrt.build(ctx, tag="scratchy:1")
    assert img.read_file("/data/f") == b"data\n"
    # buildah's and BuildKit's rule: an image without PATH gets the usual one.
    assert img.config.env == {"PATH": DEFAULT_PATH, "A": "1"} and img.config.cmd == ["/app"]
    img.save(tmp_path / "out", format="oci-archive")
    with tarfile.open(tmp_path / "out") as tf:
        assert "index.json" in tf.getnames()


BUILD_AND_BE_KILLED = """
import sys, pyrt
pyrt.build(sys.argv[1], build_args={"BASE": sys.argv[2]})
"""


def test_owner_killed_during_a_run_step_leaves_nothing(
    tmp_path: Path, store: Path, rootfs: Path
) -> None:
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nCOPY f /f\n"
                                   "RUN touch /started && sleep 600\n", "f": "f\n"})  # fmt: skip
    from pyrt.host.places import state_root

    containers = state_root() / "containers"
    before = set(os.listdir(containers)) if containers.is_dir() else set()
    env = {**os.environ, "PYRT_ROOT": str(store)}
    p = subprocess.Popen([sys.executable, "-c", BUILD_AND_BE_KILLED, str(ctx), str(rootfs)],
                         env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    cid = None
    while time.monotonic() < deadline and p.poll() is None and cid is None:
        for name in set(os.listdir(containers)) - before if containers.is_dir() else ():
            upper = containers / name / "upper" / "started"
            if upper.exists():
                cid = name
        time.sleep(0.01)
    assert cid is not None and p.poll() is None, "the RUN step never started"
    p.kill()
    p.wait()
    assert_nothing_left_of(cid, within=5.0)
    # The next build runs the step again (nothing half-made was cached), and works.
    (ctx / "Containerfile").write_text("ARG BASE\nFROM $BASE\nCOPY f /f\nRUN touch /done\n")
    img = pyrt.build(ctx, build_args={"BASE": str(rootfs)})
    assert pyrt.run(img, ["ls", "/f", "/done"]).returncode == 0


def test_copy_add_forms(tmp_path: Path, store: Path, base: dict[str, str]) -> None:
    ctx = write(
        tmp_path / "ctx",
        {
            "Containerfile": "ARG BASE\nFROM $BASE\nWORKDIR /w\nCOPY f1 f2 ./many/\n"
            'COPY ["sp ace", "/json/"]\nCOPY f* /glob/\nCOPY f1 /etc\n'
            "ADD arc.tar /x/\nADD plain.txt /x/plain\nCOPY link-in /li\n",
            "f1": "1\n",
            "f2": "2\n",
            "sp ace": "s\n",
            "plain.txt": "p\n",
            "d/real": "r\n",
        },
    )
    os.symlink("d/real", ctx / "link-in")
    with tarfile.open(ctx / "arc.tar", "w") as tf:
        ti = tarfile.TarInfo("inner/owned")
        ti.size, ti.uid, ti.gid = 2, 7, 8
        import io

        tf.addfile(ti, io.BytesIO(b"o\n"))
    img = pyrt.build(ctx, build_args=base)
    out = pyrt.run(img, ["sh", "-c", "ls /w/many; ls /json; ls /glob; cat /etc/f1 /x/plain /li; "
                         "stat -c '%u:%g' /x/inner/owned; pwd"], text=True).stdout  # fmt: skip
    assert out.splitlines() == ["f1", "f2", "sp ace", "f1", "f2", "1", "p", "r",
                                "7:8" if os.geteuid() == 0 else "0:0", "/w"]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "line", "message"),
    [
        (lambda c: None, "COPY ../outside /x", "outside the build context"),
        (lambda c: os.symlink("/etc", c / "abs"), "COPY abs/passwd /x", "not found"),
        (lambda c: os.symlink("../../etc", c / "rel"), "COPY rel/passwd /x", "leads outside"),
        (lambda c: os.mkfifo(c / "fifo"), "COPY . /x/", "fifo: a FIFO"),
        (lambda c: None, "ADD https://example.com/x /x", "ADD of a URL"),
        (lambda c: None, "RUN --mount=type=cache,target=/c true", "RUN --mount is not supported"),
        (lambda c: None, "COPY --link f /x", "COPY --link is not supported"),
        (lambda c: None, "COPY --chown f /x", "--chown needs a value"),
        (lambda c: None, "COPY missing /x", "missing: not found in the build context"),
        (lambda c: None, "FROM --platform=linux/s390x x", "only this machine's platform"),
    ],
)
def test_hostile_contexts_are_refused(
    tmp_path: Path, store: Path, base: dict[str, str], setup: Any, line: str, message: str
) -> None:
    ctx = write(tmp_path / "ctx", {"f": "f\n"})
    (tmp_path / "outside").write_text("secret\n")
    setup(ctx)
    (ctx / "Containerfile").write_text(f"ARG BASE\nFROM $BASE\n{line}\n")
    with pytest.raises(pyrt.BuildError, match=message) as e:
        pyrt.build(ctx, build_args=base)
    assert e.value.line == 3 and line in str(e.value)
    assert not (store / "tmp").exists() or os.listdir(store / "tmp") == []


def test_hostile_tarball_in_add_writes_nothing_outside(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    import io

    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nADD evil.tar /x/\n"})
    escaped = tmp_path / "escaped"
    with tarfile.open(ctx / "evil.tar", "w") as tf:
        for name in ("ok.txt", "../" * 12 + str(escaped).lstrip("/")):
            ti = tarfile.TarInfo(name)
            ti.size = 2
            tf.addfile(ti, io.BytesIO(b"x\n"))
    with pytest.raises(pyrt.BuildError, match=r":3: ADD evil.tar /x/: .*climbs out"):
        pyrt.build(ctx, build_args=base)
    assert not escaped.exists()
    # Through a symlink the archive itself makes: confined to the container's root.
    with tarfile.open(ctx / "evil.tar", "w") as tf:
        link = tarfile.TarInfo("lnk")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tf.addfile(link)
        ti = tarfile.TarInfo("lnk/escaped")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"y\n"))
    img = pyrt.build(ctx, build_args=base)
    assert not escaped.exists()
    # The link's absolute target is taken inside the destination, as an image layer's would be.
    assert img.read_file(f"/x{tmp_path}/escaped") == b"y\n"


@needs_root
def test_device_node_in_the_context_is_refused(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nCOPY . /x/\n"})
    os.mknod(ctx / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(pyrt.BuildError, match="null: a character device"):
        pyrt.build(ctx, build_args=base)


@pytest.mark.parametrize("where", [".dockerignore", "fifo"])
def test_fifo_in_the_context_is_refused(
    where: str, tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    """A FIFO would block its reader forever (no writer ever comes): as the context's
    .dockerignore, or a file COPY takes, it is refused at once, naming it."""
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nCOPY . /x/\n"})
    os.mkfifo(ctx / where)
    with pytest.raises(pyrt.BuildError, match=where):
        pyrt.build(ctx, build_args=base)


def test_a_context_tree_deeper_than_python_recurses_is_refused(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    """COPY of a context directory nested 1200 deep was a RecursionError; it is a BuildError
    naming the line and the depth, and a context holding such a tree that COPY does not take
    builds."""
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nCOPY . /x/\n",
                                   "Containerfile.one": "ARG BASE\nFROM $BASE\nCOPY f /f\n",
                                   "f": "flat\n"})  # fmt: skip
    fd = os.open(ctx, os.O_RDONLY)
    for _ in range(1200):
        os.mkdir("d", dir_fd=fd)
        fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(fd)
    try:
        with pytest.raises(pyrt.BuildError, match=r"Containerfile:3: COPY .*more than 400 dir"):
            pyrt.build(ctx, build_args=base)
        img = pyrt.build(ctx, file="Containerfile.one", build_args=base)
        assert img.read_file("/f") == b"flat\n"
    finally:  # (pytest's own cleanup of tmp_path recurses, and would stop at this tree)
        subprocess.run(["rm", "-rf", str(ctx / "d")], check=True)


def test_variables_that_grow_without_bound_are_refused(
    tmp_path: Path, store: Path, base: dict[str, str]
) -> None:
    """`ENV A=$A$A` forty times once filled 24 GiB and the OOM killer took the caller; forty
    lines copying one large ARG under new names did the same more slowly. Both are a
    BuildError naming the line, long before memory runs short."""
    doubling = "ARG BASE\nFROM $BASE\nENV A=0123456789\n" + "ENV A=$A$A\n" * 40 + "RUN true\n"
    ctx = write(tmp_path / "a", {"Containerfile": doubling})
    with pytest.raises(pyrt.BuildError, match=r"Containerfile:20: ENV A=\$A\$A: expands to more"):
        pyrt.build(ctx, build_args=base)
    spread = (
        "ARG BASE\nFROM $BASE\nARG A\n"
        + "".join(f"ARG B{i}=$A\n" for i in range(40))
        + "RUN true\n"
    )
    ctx = write(tmp_path / "b", {"Containerfile": spread})
    with pytest.raises(pyrt.BuildError, match=r"ARG B\d+=\$A: the stage's ARGs would hold more"):
        pyrt.build(ctx, build_args={**base, "A": "x" * 100_000})


def test_bad_arguments(tmp_path: Path, base: dict[str, str]) -> None:
    with pytest.raises(TypeError, match="context"):
        pyrt.build(3)  # type: ignore[arg-type]
    with pytest.raises(pyrt.PyrtError, match="not a directory"):
        pyrt.build(tmp_path / "nope")
    with pytest.raises(pyrt.PyrtError, match="has no Containerfile or Dockerfile"):
        pyrt.build(tmp_path)
    with pytest.raises(TypeError, match="build_args"):
        pyrt.build(tmp_path, build_args=[("a", "b")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="build_args"):
        pyrt.build(tmp_path, build_args={"a": 1})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="pull"):
        pyrt.build(tmp_path, pull="yes")  # type: ignore[arg-type]
    (tmp_path / "Containerfile").write_text("RUN true\n")
    with pytest.raises(pyrt.BuildError, match=r"Containerfile:1: RUN true: only ARG"):
        pyrt.build(tmp_path)
    (tmp_path / "Containerfile").write_bytes(b"FROM x\nRUN \xff\n")
    with pytest.raises(pyrt.BuildError, match="not UTF-8"):
        pyrt.build(tmp_path)


# --- push ------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAVE_REGISTRY, reason="needs docker-registry and skopeo")
def test_build_push_inspect_remove_pull_run(
    tmp_path: Path,
    store: Path,
    base: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = write(tmp_path / "ctx", {
        "Containerfile": "ARG BASE\nFROM $BASE\nRUN head -c 300000 /dev/urandom > /big\n"
                         "COPY app.sh /app.sh\nENV MODE=pushed\nLABEL l=1\nEXPOSE 80\n"
                         "CMD [\"sh\", \"/app.sh\"]\n",
        "app.sh": "echo \"mode=$MODE\"; wc -c < /big\n"})  # fmt: skip
    img = pyrt.build(ctx, build_args=base, tag="app:1")
    caplog.set_level(logging.INFO, logger="pyrt.push")
    with registry(tmp_path / "reg", creds=("u", "p")) as reg:
        digest = img.push(f"{reg.host}/team/app:1", username="u", password="p")
        assert digest.startswith("sha256:")
        assert "uploaded in one request" in caplog.text
        info = json.loads(run("skopeo", "inspect", "--tls-verify=false", "--creds", "u:p",
                              f"docker://{reg.host}/team/app:1"))  # fmt: skip
        assert info["Digest"] == digest
        assert info["Labels"] == {"l": "1"} and "MODE=pushed" in info["Env"]
        assert len(info["Layers"]) == len(img.lower)
        raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                             "u:p", f"docker://{reg.host}/team/app:1"))  # fmt: skip
        assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"

        # Chunked uploads, and a blob the registry has in another repository is mounted.
        monkeypatch.setattr(pyrt_push, "CHUNK", 64 << 10)
        caplog.clear()
        img.push(f"{reg.host}/team/copy:2", username="u", password="p")
        assert "mounted from team/app" in caplog.text
        caplog.clear()
        with pytest.raises(pyrt.ImageError, match=r"access denied|authentication"):
            img.push(f"{reg.host}/team/denied:1", username="u", password="wrong")
        (store / "pushed.json").unlink()  # forget where the blobs are: upload them in chunks
        img.push(f"{reg.host}/other/chunked:3", username="u", password="p")
        assert "uploaded in" in caplog.text and "chunks" in caplog.text

        img.remove()
        with pytest.raises(pyrt.ImageNotFound):
            pyrt.Image.get("app:1")
        back = pyrt.Image.pull(f"{reg.host}/other/chunked:3", insecure=True, username="u",
                               password="p")  # fmt: skip
        assert back.config.env["MODE"] == "pushed"
        assert pyrt.run(back, text=True).stdout.split() == ["mode=pushed", "300000"]


@pytest.mark.skipif(not HAVE_REGISTRY, reason="needs docker-registry")
def test_push_refuses_bad_references_and_the_host_image(tmp_path: Path, image: pyrt.Image) -> None:
    with pytest.raises(TypeError, match="ref"):
        image.push(5)  # type: ignore[arg-type]
    with pytest.raises(pyrt.ImageError, match="invalid image reference"):
        image.push("127.0.0.1:5000/UPPER:1")
    with pytest.raises(pyrt.ImageError, match="not a digest"):
        image.push("127.0.0.1:5000/a@sha256:" + "0" * 64)
    with pytest.raises(pyrt.PyrtError, match="host image cannot be pushed"):
        pyrt.Image.host().push("127.0.0.1:5000/a:1")
    with pytest.raises(TypeError, match="insecure"):
        image.push("127.0.0.1:5000/a:1", insecure="yes")  # type: ignore[arg-type]
    with pytest.raises(pyrt.ImageError, match="cannot reach"):
        image.push("127.0.0.1:1/a:1")


def test_cli_build_and_images(tmp_path: Path, store: Path, rootfs: Path) -> None:
    ctx = write(tmp_path / "ctx", {"Containerfile": "ARG BASE\nFROM $BASE\nARG X\n"
                                   "RUN echo $X > /x\nCMD [\"cat\", \"/x\"]\n"})  # fmt: skip
    env = {**os.environ, "PYRT_ROOT": str(store), "X": "from-env"}
    pyrt_cli = [sys.executable, "-m", "pyrt"]
    out = subprocess.run(
        [*pyrt_cli, "build", "-q", "--build-arg", f"BASE={rootfs}", "--build-arg", "X", str(ctx)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.strip()
    ran = subprocess.run([*pyrt_cli, "run", image_id], capture_output=True, text=True, env=env)
    assert ran.stdout == "from-env\n", ran.stderr
    listed = subprocess.run([*pyrt_cli, "images"], capture_output=True, text=True, env=env)
    assert "<none>" in listed.stdout and image_id[7:19] in listed.stdout
    bad = subprocess.run([*pyrt_cli, "build", "-f", str(tmp_path / "nope"), str(ctx)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    assert bad.returncode == 125 and "no such Containerfile" in bad.stderr


# --- rootless --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def public() -> Iterator[Path]:
    yield from public_dir()


ROOTLESS_BUILD = """
import shutil
ctx = Path.home() / "ctx"
ctx.mkdir()
(ctx / "f.txt").write_text("hi\\n")
(ctx / "Containerfile").write_text(
    "ARG BASE\\nFROM $BASE\\nCOPY f.txt /opt/f.txt\\nRUN echo made > /made && id -u >> /made\\n"
    + ("COPY --chown=1000:1000 f.txt /opt/owned\\nRUN chown 1000:1000 /made\\n" if OWNERS else "")
    + ("USER app\\n" if OWNERS else "") + "CMD [\\"sh\\", \\"-c\\", \\"cat /made /opt/f.txt; "
    + "stat -c %u:%g /opt/f.txt /made; stat -c %u:%g /opt/owned || echo none\\"]\\n")
img = pyrt.build(ctx, build_args={"BASE": str(PUBLIC / "rootfs")}, tag="mine:1")
out["run"] = pyrt.run(img, text=True).stdout.split()
out["again"] = pyrt.build(ctx, build_args={"BASE": str(PUBLIC / "rootfs")}).id == img.id
if not OWNERS:
    (ctx / "Containerfile").write_text("ARG BASE\\nFROM $BASE\\nCOPY --chown=5 f.txt /x\\n")
    try:
        pyrt.build(ctx, build_args={"BASE": str(PUBLIC / "rootfs")})
    except pyrt.BuildError as e:
        out["refused"] = str(e)
"""


@NEEDS_SETPRIV
def test_rootless_build_without_subordinate_ids(public: Path, tmp_path: Path) -> None:
    out = as_user(NOBODY, NOBODY, "OWNERS = False\n" + ROOTLESS_BUILD, public, tmp_path)
    assert out["run"] == ["made", "0", "hi", "0:0", "0:0", "none"]
    assert out["again"] and out["leftover"] == []
    assert "Containerfile:3: COPY --chown=5" in out["refused"]
    assert "subordinate id range" in out["refused"]


@NEEDS_SETPRIV
@pytest.mark.skipif(subid_user() is None, reason="needs the pyrt-ci user with /etc/subuid")
def test_rootless_build_with_a_subordinate_range(public: Path, tmp_path: Path) -> None:
    ids = subid_user()
    assert ids is not None
    out = as_user(*ids, "OWNERS = True\n" + ROOTLESS_BUILD, public, tmp_path)
    assert out["run"] == ["made", "0", "hi", "0:0", "1000:1000", "1000:1000"]
    assert out["again"] and out["leftover"] == []
