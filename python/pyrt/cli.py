"""The ``pyrt`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

from pyrt import _core
from pyrt.config import checks
from pyrt.config.mounts import Bind, Mount, Tmpfs
from pyrt.container.container import Container, spec_preview, start_on
from pyrt.errors import ImageNotFound, PathNotFound, PyrtError, SpawnError
from pyrt.image import Image, images
from pyrt.oci import spec


def resolve_image(ref: str) -> Image:
    """ "host", a path (rootfs directory or tarball), or a name in the local store."""
    if ref == "host":
        return Image.host()
    if os.path.exists(ref):
        return Image.load(ref)
    try:
        return Image.get(ref)
    except ImageNotFound:
        if "/" in ref or ref.startswith("."):
            raise ImageNotFound(
                f"image {ref!r}: no such file or directory, and no stored image of that name"
            ) from None
        raise


def _env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            # Docker's rule: "-e NAME" passes the caller's value, if any.
            if k in os.environ:
                env[k] = os.environ[k]
            continue
        env[k] = v
    return env


def _volume(spec: str) -> Bind:
    parts = spec.split(":")
    if len(parts) == 2:
        return Bind(parts[0], parts[1])
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        return Bind(parts[0], parts[1], readonly=parts[2] == "ro")
    raise PyrtError(f"-v {spec!r}: expected SRC:DST or SRC:DST:ro")


def _tmpfs(spec: str) -> Tmpfs:
    """Docker's ``--tmpfs DST[:OPTIONS]``: options size= and mode= (octal), and rw; anything
    else is refused by name rather than taken as part of the path."""
    target, _, options = spec.partition(":")
    size: Optional[str] = None
    mode = 0o1777
    for opt in filter(None, options.split(",")):
        key, eq, value = opt.partition("=")
        if key == "size" and eq:
            size = value
        elif key == "mode" and eq:
            try:
                mode = int(value, 8)
            except ValueError:
                raise PyrtError(f"--tmpfs {spec!r}: mode={value!r} is not an octal mode") from None
        elif opt != "rw":
            raise PyrtError(f"--tmpfs {spec!r}: unknown option {opt!r} (size=, mode= and rw)")
    return Tmpfs(target, size=size, mode=mode)


def build_parser() -> argparse.ArgumentParser:
    """pyrt's command line (also parsed by ``monitor`` and ``scripts/gen_cli_docs.py``)."""
    p = argparse.ArgumentParser(prog="pyrt", description="Daemonless Linux containers.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run a command in a new container")
    r.add_argument("--rm", action="store_true", help="remove the container when it exits")
    r.add_argument(
        "-d", "--detach", action="store_true",
        help="run in the background, print the id; lasts until `pyrt kill`/`pyrt rm`",
    )  # fmt: skip
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]")
    r.add_argument("--tmpfs", action="append", default=[], metavar="DST[:size=N,mode=M]")
    r.add_argument("-w", "--workdir")
    r.add_argument("-u", "--user")
    r.add_argument("--hostname")
    r.add_argument("--read-only", action="store_true")
    r.add_argument(
        "--network",
        metavar="MODE|NAME",
        help="none (default): loopback only; private: outbound access and -p; host; or the "
        "NAME of a network (`pyrt network create`) to join",
    )
    r.add_argument(
        "--alias", action="append", default=[], metavar="A",
        help="a name for the container on its --network NAME (repeatable)",
    )  # fmt: skip
    r.add_argument("--cap-add", action="append", default=[])
    r.add_argument("--cap-drop", action="append", default=[])
    r.add_argument("--privileged", action="store_true")
    r.add_argument("--name")
    r.add_argument("--entrypoint")
    r.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    r.add_argument("-t", "--tty", action="store_true", help="a pseudo-terminal as the console")
    r.add_argument("--memory", "-m", help='memory limit, e.g. "256m"; swap is capped to it')
    r.add_argument("--disk", help='bound on the writable layer, e.g. "1g" (root; a tmpfs)')
    r.add_argument("--pids-limit", type=int)
    r.add_argument("--cpus", type=float)
    r.add_argument(
        "-p",
        "--publish",
        dest="p",
        action="append",
        default=[],
        metavar="[[ADDR:]HOST:]CTR[/udp]",
        help="publish a container port on the host (implies --network private)",
    )
    r.add_argument("--init", action="store_true", help="a tiny init as pid 1: reaps, forwards")
    r.add_argument("image", help='"host", a rootfs directory or tarball, or a stored name')
    r.add_argument("command", nargs=argparse.REMAINDER)

    sub.add_parser("ps", help="list running containers (from any process)")
    nw = sub.add_parser("network", help="networks that several containers join by name")
    nws = nw.add_subparsers(dest="network_cmd", required=True)
    nwc = nws.add_parser("create", help="make a network (it lasts until `pyrt network rm`)")
    nwc.add_argument("name")
    nws.add_parser("ls", help="list the networks, with their members")
    nwr = nws.add_parser("rm", help="remove networks (refused while members run, unless -f)")
    nwr.add_argument("-f", "--force", action="store_true", help="kill running members first")
    nwr.add_argument("names", nargs="+")
    ex = sub.add_parser("exec", help="run a command in a running container")
    ex.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    ex.add_argument("-u", "--user")
    ex.add_argument("-w", "--workdir")
    ex.add_argument("-i", "--interactive", action="store_true")
    ex.add_argument("container", help="id, id prefix or name")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    lg = sub.add_parser("logs", help="what a container wrote to stdout and stderr")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("container")
    kl = sub.add_parser("kill", help="send a signal to a container (default KILL)")
    kl.add_argument("-s", "--signal", default="KILL")
    kl.add_argument("container")
    rm = sub.add_parser("rm", help="remove containers (killing them if running)")
    rm.add_argument("-f", "--force", action="store_true", help="accepted for docker habits")
    rm.add_argument("containers", nargs="+")

    pl_ = sub.add_parser("pull", help="pull an image from a registry into the local store")
    pl_.add_argument("--insecure", action="store_true", help="plain HTTP (default: only local)")
    pl_.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry")
    pl_.add_argument("ref")

    ph = sub.add_parser("push", help="push an image to a registry (OCI distribution API)")
    ph.add_argument("--insecure", action="store_true", help="plain HTTP (default: only local)")
    ph.add_argument("--creds", metavar="USER:PASS", help="credentials for the registry")
    ph.add_argument("image", help="a stored image's name or id")
    ph.add_argument("ref", nargs="?", help="where to (default: the image's name)")
    bd = sub.add_parser("build", help="build an image from a Containerfile or Dockerfile")
    bd.add_argument("-t", "--tag", help="the name to record the image under")
    bd.add_argument("-f", "--file", help="the Containerfile (default: CONTEXT/Containerfile)")
    bd.add_argument("--build-arg", action="append", default=[], metavar="K=V",
                    help="a value for an ARG (repeatable)")  # fmt: skip
    bd.add_argument("--target", help="build up to this stage")
    bd.add_argument("--pull", action="store_true", help="pull FROM images even if stored")
    bd.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    bd.add_argument("context", metavar="CONTEXT")
    ld = sub.add_parser(
        "load", help="load an image (rootfs, OCI layout or archive, docker archive) into the store"
    )
    ld.add_argument("path")
    ld.add_argument("--tag", "-t", help="the name to record it under")
    ld.add_argument("--ref", help="which image of a multi-image layout or archive")
    cp = sub.add_parser("cp", help="copy files between a container and the host (ID:PATH)")
    cp.add_argument("src", metavar="SRC", help="ID:PATH or a host path")
    cp.add_argument("dst", metavar="DST", help="ID:PATH or a host path")
    cm = sub.add_parser("commit", help="a new image of a container's image plus its changes")
    cm.add_argument("container")
    cm.add_argument("tag", nargs="?")
    sv = sub.add_parser("save", help="write an image out (OCI layout, OCI or docker archive)")
    sv.add_argument("image")
    sv.add_argument("path")
    sv.add_argument("--format", default="oci", choices=["oci", "oci-archive", "docker-archive"])
    sub.add_parser("images", help="list the local store")
    rmi = sub.add_parser("rmi", help="remove an image from the local store")
    rmi.add_argument("image")
    sub.add_parser(
        "gc", help="remove what crashed containers left behind, and layers no image uses"
    )
    pl = sub.add_parser("plan", help="print what the core would do for a container (debugging)")
    pl.add_argument("image")
    pl.add_argument("command", nargs=argparse.REMAINDER)
    return p


def _publish(specs: list[str]) -> dict[str, Any]:
    """Docker's -p forms: CTR, HOST:CTR, ADDR:HOST:CTR, ADDR::CTR (CTR may end in /udp)."""
    ports: dict[str, Any] = {}
    for p in specs:
        parts = p.rsplit(":", 2)
        ctr = parts[-1]
        if len(parts) == 1:
            ports[ctr] = None
        elif len(parts) == 2:
            ports[ctr] = int(parts[0]) if parts[0].isdigit() else parts[0]
        else:
            ports[ctr] = f"{parts[0]}:{parts[1] or 0}"
    return ports


def container_from(a: argparse.Namespace) -> Container:
    """The Container a parsed `pyrt run` describes (also for ``monitor``, which runs one)."""
    network = a.network or ("private" if a.p else "none")
    mounts: list[Mount] = [_volume(v) for v in a.volume]
    mounts += [_tmpfs(t) for t in a.tmpfs]
    env = _env(a.env)
    if a.tty:
        # Docker's rule: a container with a terminal is told what kind it is.
        env.setdefault("TERM", "xterm")
    opts: dict[str, Any] = {
        "env": env,
        "workdir": a.workdir,
        "user": a.user,
        "hostname": a.hostname,
        "name": a.name,
        "mounts": mounts,
        "readonly_rootfs": a.read_only,
        "network": network,
        "aliases": a.alias,
        "ports": _publish(a.p) or None,
        "cap_add": a.cap_add,
        "cap_drop": a.cap_drop,
        "privileged": a.privileged,
        "memory": a.memory,
        "pids_limit": a.pids_limit,
        "cpus": a.cpus,
        "disk": a.disk,
        "init": a.init,
        "tty": a.tty,
    }
    entrypoint = [a.entrypoint] if a.entrypoint is not None else None
    return Container(resolve_image(a.image), a.command or None, entrypoint=entrypoint, **opts)


def _attach_console(c: Container, interactive: bool) -> None:
    """Bridges our terminal and the container's console until the console closes: raw mode,
    window size passed on (and again on SIGWINCH), bytes copied both ways."""
    import fcntl
    import select
    import termios
    import tty

    master = c.console
    assert master is not None
    local_tty = os.isatty(0)

    def copy_size(*_: object) -> None:
        if local_tty:
            with contextlib.suppress(OSError):
                size = fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(master, termios.TIOCSWINSZ, size)

    copy_size()
    signal.signal(signal.SIGWINCH, copy_size)
    saved = termios.tcgetattr(0) if local_tty and interactive else None
    if saved is not None:
        tty.setraw(0)
    try:
        watch = [master, 0] if interactive else [master]
        while True:
            ready, _, _ = select.select(watch, [], [])
            if master in ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every holder of the console's slave is gone
                    return
                if not data:
                    return
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 1 << 16)
                if data:
                    os.write(master, data)
                else:
                    watch = [master]
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _run(a: argparse.Namespace) -> int:
    c = container_from(a)
    if a.tty:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            start_on(c, devnull)
            _attach_console(c, a.interactive)
            code = c.wait()
        finally:
            os.close(devnull)
            c.remove()
        return code if code >= 0 else 128 - code
    stdin = sys.stdin.fileno() if a.interactive else os.open(os.devnull, os.O_RDONLY)
    # The container writes straight to our stdout and stderr: no copying, no buffering.
    sys.stdout.flush()
    sys.stderr.flush()
    # Forward the signals a user sends to `pyrt run` to the container, as docker run does.
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(s, lambda signum, _frame: c.kill(signum))
    try:
        start_on(c, stdin, sys.stdout.fileno(), sys.stderr.fileno())
        code = c.wait()
    finally:
        if not a.interactive:
            os.close(stdin)
        c.remove()
    # A signal death is reported as the shell does: 128 + the signal number.
    return code if code >= 0 else 128 - code


def parse_signal(name: str) -> int:
    """ "KILL", "SIGKILL", "kill" or "9"."""
    n = name.strip().upper()
    if n.isdigit():
        return int(n)
    try:
        return int(getattr(signal, n if n.startswith("SIG") else "SIG" + n))
    except AttributeError:
        raise PyrtError(f"unknown signal: {name}") from None


def _start_owner(module: str, args: Sequence[str]) -> tuple[str, str]:
    """Starts ``python -m module FD ARGS...`` in a session of its own, to own something beyond
    this command's life; returns what it reports on FD: ("ok", rest) or ("err", rest)."""
    r, w = os.pipe()
    import subprocess

    # An interpreter this user cannot reach by its path (a virtual environment made by root
    # over a Python under /root, run through setpriv) is still this process's own binary:
    # started as such, with this process's module path.
    exe, env = sys.executable, None
    if not os.access(exe, os.X_OK):
        exe = "/proc/self/exe"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    subprocess.Popen(
        [exe, "-m", module, str(w), *args],
        pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, env=env,
    )  # fmt: skip
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read().strip()
    kind, _, rest = report.partition(" ")
    return kind, rest


def _run_detached(argv: Sequence[str]) -> int:
    """`pyrt run -d`: a monitor process owns the container; we print its id once it runs."""
    kind, rest_msg = _start_owner(
        "pyrt.monitor", [x for x in argv[1:] if x not in ("-d", "--detach")]
    )
    if kind == "ok":
        print(rest_msg)
        return 0
    code, _, msg = rest_msg.partition(" ")
    print(f"pyrt: {msg or 'the container monitor failed to start'}", file=sys.stderr)
    return int(code) if code.isdigit() else 125


def _network(a: argparse.Namespace) -> int:
    """`pyrt network create|ls|rm`: a created network is owned by a holder process (see
    ``networks.main``) until `rm`."""
    from pyrt.network.shared import Network, list_networks

    if a.network_cmd == "create":
        checks.name(a.name, "name")
        kind, msg = _start_owner("pyrt.network.shared", [a.name])
        if kind != "ok":
            raise PyrtError(msg or "the network's holder failed to start")
        print(a.name)
    elif a.network_cmd == "ls":
        print(f"{'NAME':24}{'MEMBERS':>8}  ADDRESSES")
        for n in list_networks():
            members = ", ".join(f"{m['address']} {'/'.join(m['names'])}" for m in n["members"])
            print(f"{n['name']:24}{len(n['members']):>8}  {members}")
    else:
        for name in a.names:
            Network.open(name).remove(force=a.force)
            print(name)
    return 0


def _ps() -> int:
    from pyrt.host.state import list_states

    print(f"{'CONTAINER ID':14}{'NAME':16}{'IMAGE':28}{'STATUS':22}{'PID':>8}  {'COMMAND':32}"
          "  PORTS")  # fmt: skip
    for st in list_states():
        cmd = " ".join(st.get("command") or [])
        ports = ", ".join(st.get("ports") or [])
        status = st["status"]
        if status == "running" and st.get("health"):
            status += f" ({st['health']})"  # Docker's "Up 3 seconds (healthy)"
        print(f"{st['id'][:12]:14}{(st.get('name') or '-'):16}{str(st.get('image'))[:26]:28}"
              f"{status:22}{st.get('pid') or '-':>8}  {cmd[:32]:32}  {ports}")  # fmt: skip
    return 0


def _exec(a: argparse.Namespace) -> int:
    from pyrt.host.state import find, pid_start_time

    st = find(a.container)
    if st["status"] != "running" or pid_start_time(st["pid"]) != st.get("pid_start"):
        raise PyrtError(f"container {a.container} is not running")
    if not a.command:
        raise PyrtError("exec needs a command")
    ids = None
    if a.user:
        # Resolved against the container's own files as they are now, as `docker exec -u`.
        from pyrt.config import users
        from pyrt.rootfs import files
        from pyrt.rootfs import view as rootview

        with rootview.running_root(st["pid"]) as root:
            etc = [_read_or_none(files.read_file, root, p) for p in ("/etc/passwd", "/etc/group")]
        ids = users.resolve(a.user, *etc)
    proc = spec.exec_process(st["process"], a.command, _env(a.env), ids, a.workdir)
    stdin = sys.stdin.fileno() if a.interactive else os.open(os.devnull, os.O_RDONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    sc = json.dumps(st["seccomp"]) if st.get("seccomp") else None
    p = _core.exec(st["pid"], json.dumps(proc), stdin, 1, 2, st.get("cgroups") or [], sc)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda signum, _frame: p.kill(signum))
    code = p.wait()
    assert code is not None
    return code if code >= 0 else 128 - code


def _read_or_none(read: Callable[[int, str], bytes], root: int, path: str) -> Optional[bytes]:
    try:
        return read(root, path)
    except PathNotFound:
        return None


def _container_ref(arg: str) -> tuple[Optional[str], str]:
    """ "ID:PATH" names a container's path; anything else (or a colon after a slash) is the
    host's (Docker's rule)."""
    ref, sep, path = arg.partition(":")
    if sep and ref and "/" not in ref:
        return ref, path or "/"
    return None, arg


def _running(ref: str) -> dict[str, Any]:
    from pyrt.host.state import find, pid_start_time

    st = find(ref)
    if st["status"] != "running" or pid_start_time(st["pid"]) != st.get("pid_start"):
        raise PyrtError(f"container {ref} is not running")
    return st


def _cp(a: argparse.Namespace) -> int:
    from pyrt.config import checks
    from pyrt.rootfs import copies
    from pyrt.rootfs import view as rootview

    (sref, spath), (dref, dpath) = _container_ref(a.src), _container_ref(a.dst)
    if (sref is None) == (dref is None):
        raise PyrtError("cp: exactly one of SRC and DST is ID:PATH")
    owner = (0, 0) if os.geteuid() == 0 else None
    if sref is not None:
        src = checks.container_path(spath, "SRC")
        dst = os.path.abspath(dpath)
        with rootview.running_root(_running(sref)["pid"]) as root:
            for left in copies.copy_out(root, src, dst):
                print(f"pyrt: left out {left}", file=sys.stderr)
    else:
        assert dref is not None
        dst = checks.container_path(dpath, "DST")
        with rootview.running_root(_running(dref)["pid"]) as root:
            copies.copy_in(root, os.path.abspath(spath), dst, owner)
    return 0


def _commit(a: argparse.Namespace) -> Image:
    """A container of another process (`pyrt run -d`) committed from its state: its image, its
    writable layer, its command; frozen while the layer is read."""
    from pathlib import Path

    from pyrt.host import cgroupfreeze, state
    from pyrt.rootfs import snapshot

    st = _running(a.container)
    img = resolve_image(str(st["image"]))
    cfg = snapshot.merged_config(img.config, {"cmd": list(st.get("command") or []),
                                              "entrypoint": []})  # fmt: skip
    with cgroupfreeze.frozen(st.get("cgroups") or []):
        return snapshot.commit(img, str(state.upper_of(Path(st["dir"]))), cfg, a.tag,
                               f"container {st['id'][:12]}")  # fmt: skip


def _logs(a: argparse.Namespace) -> int:
    import time

    from pyrt.host.state import find, pid_start_time

    st = find(a.container)
    out = sys.stdout.buffer
    with open(st["log"], "rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not a.follow or pid_start_time(st["pid"]) != st.get("pid_start"):
                return 0
            time.sleep(0.05)


def _kill(a: argparse.Namespace) -> int:
    from pyrt.host.state import find

    st = find(a.container)
    sig = parse_signal(a.signal)
    try:
        # Through a pidfd, checked against the recorded start: never a reused pid.
        _core.signal_recorded(st.get("pid") or 0, st.get("pid_start") or 0, sig)
    except ProcessLookupError:
        raise PyrtError(f"container {a.container} is not running") from None
    return 0


def _rm(a: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from pyrt.host.collect import remove_cgroup
    from pyrt.host.state import find

    for ref in a.containers:
        st = find(ref)
        d = Path(st["dir"])
        if st.get("detached"):
            # Its monitor removes everything, then exits.
            os.kill(st["owner"], signal.SIGTERM)
            deadline = time.monotonic() + 10
            while d.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            # Owned by a live Python process: end the container now; the owner frees the rest.
            with contextlib.suppress(ProcessLookupError):
                _core.signal_recorded(st.get("pid") or 0, st.get("pid_start") or 0, 9)
            remove_cgroup(st.get("cgroups") or [])
            (d / "removed").touch()
        print(st["id"])
    return 0


def _push(a: argparse.Namespace) -> int:
    user, _, password = (a.creds or "").partition(":")
    img = resolve_image(a.image)
    ref = a.ref or a.image
    digest = img.push(ref, insecure=True if a.insecure else None, username=user or None,
                      password=password or None)  # fmt: skip
    print(digest)
    return 0


def _build(a: argparse.Namespace) -> int:
    from pyrt.imagebuild import build

    args = {}
    for kv in a.build_arg:
        k, eq, v = kv.partition("=")
        if not eq:
            # Docker's rule: --build-arg NAME takes the value from the environment.
            if k not in os.environ:
                continue
            v = os.environ[k]
        args[k] = v
    img = build(a.context, file=a.file, tag=a.tag, build_args=args, target=a.target,
                pull=a.pull, progress=False if a.quiet else None)  # fmt: skip
    if a.tag is None:
        # Recorded under its id, so that `pyrt run ID` finds it (`pyrt images` shows <none>).
        img.tag(img.id)
    print(img.id)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    try:
        if a.cmd == "run" and a.detach:
            return _run_detached(argv)
        if a.cmd == "run":
            return _run(a)
        if a.cmd == "ps":
            return _ps()
        if a.cmd == "network":
            return _network(a)
        if a.cmd == "exec":
            return _exec(a)
        if a.cmd == "logs":
            return _logs(a)
        if a.cmd == "kill":
            return _kill(a)
        if a.cmd == "rm":
            return _rm(a)
        if a.cmd == "pull":
            user, _, password = (a.creds or "").partition(":")
            img = Image.pull(a.ref, insecure=a.insecure, username=user or None,
                             password=password or None)  # fmt: skip
            print(img.id)
            return 0
        if a.cmd == "push":
            return _push(a)
        if a.cmd == "build":
            return _build(a)
        if a.cmd == "load":
            img = Image.load(a.path, tag=a.tag, ref=a.ref)
            print(img.id)
            return 0
        if a.cmd == "cp":
            return _cp(a)
        if a.cmd == "commit":
            print(_commit(a).id)
            return 0
        if a.cmd == "save":
            resolve_image(a.image).save(a.path, format=a.format)
            return 0
        if a.cmd == "images":
            print(f"{'NAME':40} {'ID':20} KIND")
            for img in images():
                for t in img.tags:
                    shown = "<none>" if t.startswith("sha256:") else t
                    print(f"{shown:40} {img.id[7:19]:20} {img.kind}")
            return 0
        if a.cmd == "rmi":
            resolve_image(a.image).remove()
            return 0
        if a.cmd == "gc":
            from pyrt.host.collect import collect_stale, remove_cgroup, stale_cgroups
            from pyrt.host.state import containers_root

            for cid in collect_stale():
                print(cid)
            live = set(os.listdir(containers_root()))
            stale = stale_cgroups(live)
            remove_cgroup(stale)
            for cg in stale:
                print(cg)
            from pyrt.image import layers, store

            with store.loading(exclusive=True), store.locked():
                # No load, pull, commit or save holds the loading lock now: whatever is in the
                # store's tmp/ was left by one that was killed.
                for name in store.collect_tmp():
                    print(f"tmp/{name}")
                used = {x for r in store.read_index().values() for x in r.get("lower") or ()}
                grace = float(os.environ.get("PYRT_GC_GRACE", "60"))
                for name in layers.collect(used, grace=grace):
                    print(f"layer sha256:{name}")
                from pyrt.image import shifted

                for name in shifted.collect(layers.mounted_lowers(), grace=grace):
                    print(name)
                from pyrt.imagebuild import cache

                for key in cache.collect():
                    print(f"build-cache {key[:12]}")
            return 0
        if a.cmd == "plan":
            c = Container(resolve_image(a.image), a.command or None)
            print(_core.plan(json.dumps(spec_preview(c))))
            return 0
    except SpawnError as e:
        print(f"pyrt: {e} (stage {e.stage})", file=sys.stderr)
        # Docker's convention: 127 for a command not found, 126 for one that cannot run.
        return 127 if e.stage == "exec" and e.errno == 2 else 126 if e.stage == "exec" else 125
    except (PyrtError, ValueError, TypeError, OverflowError) as e:
        # A user's mistake (a bad size, name, path or value) is one line, never a traceback.
        print(f"pyrt: {e}", file=sys.stderr)
        return 125
    except OSError as e:
        print(f"pyrt: {e}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
