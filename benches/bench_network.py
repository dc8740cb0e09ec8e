"""Networks, pyrt against podman's root default (netavark bridge), the same busybox httpd
serving the same files:

- through a published port: throughput (a 64 MiB file over HTTP) and connection latency (a new
  TCP connection and a one-byte file per request) from the host, pyrt's network="private" and
  a pyrt.Network member against podman's `-p`;
- container to container on one network (a pyrt.Network against `podman network create`):
  the same two measures, timed inside the client container (a loop of busybox wget, so that
  neither runtime's exec cost is counted), by address.

podman runs with its own --root and runc (Debian 12's crun refuses this VM's hybrid cgroup
layout); the image is the same busybox rootfs, imported into podman. The two servers run side
by side and the client takes turns between them.

Run as root:  python benches/bench_network.py [-n REQUESTS] [--json FILE]

With ``--as-user NAME`` (started as root), the same again rootless: it runs itself as NAME (a
user with a subordinate id range), against rootless podman (its default slirp4netns network with
rootlessport's published ports, and a network of its own; runc, cgroupfs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyrt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_image import podman as podman_cmd

from helpers import make_busybox_rootfs

BIG = 64 << 20
#: Requests per timed loop inside a client container (the loop's time / BATCH is one request),
#: and 64 MiB downloads per timed loop: the only clock busybox offers in there is
#: /proc/uptime's, in hundredths of a second.
BATCH = 200
BIG_BATCH = 8


def inside_loop(url: str, n: int) -> list[str]:
    """A shell loop that fetches ``url`` ``n`` times and prints the microseconds it took."""
    now = "$(tr -d . < /proc/uptime | cut -d' ' -f1)"
    loop = (f"s={now}; i=0; while [ $i -lt {n} ]; do wget -qO /dev/null {url} || exit 1; "
            f"i=$((i+1)); done; e={now}; echo $(( (e - s) * 10000 ))")  # fmt: skip
    return ["sh", "-c", loop]


def container_to_container(a: argparse.Namespace, img: pyrt.Image, podman: list[str],
                           server: list[str], results: dict[str, list[float]]) -> None:  # fmt: skip
    """Two members of one network each: a server, and a client that fetches from it."""
    net_name = f"bench-{os.getpid()}"
    made: list[str] = []
    try:
        subprocess.run([*podman, "network", "create", net_name], check=True, capture_output=True)

        def podman_run(name: str, argv: list[str]) -> str:
            limits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
            subprocess.run([*podman, "run", "-d", "--network", net_name, "--name", name, *limits,
                            "localhost/bb-net", *argv],
                           check=True, capture_output=True)  # fmt: skip
            made.append(name)
            return name

        psrv = podman_run(f"srv-{os.getpid()}", server)
        pcli = podman_run(f"cli-{os.getpid()}", ["sleep", "3600"])
        pip = subprocess.run(
            [*podman, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
             psrv], check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip

        def podman_exec(argv: list[str]) -> str:
            return subprocess.run([*podman, "exec", pcli, *argv], check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip

        with pyrt.Network() as net:
            srv = pyrt.Container(img, server, network=net).start()
            cli = pyrt.Container(img, ["sleep", "3600"], network=net).start()
            srv.wait_for_http(8080, "/small", timeout=30)
            runs = {
                "pyrt": lambda argv: cli.exec(argv, check=True, text=True).stdout,
                "podman": podman_exec,
            }
            addr = {"pyrt": srv.ip, "podman": pip}
            for name, run in runs.items():  # warm up, and wait for podman's server
                for _ in range(100):
                    try:
                        run(inside_loop(f"http://{addr[name]}:8080/small", 1))
                        break
                    except (subprocess.CalledProcessError, pyrt.ContainerError):
                        time.sleep(0.05)
            for r in range(max(2, a.requests // BATCH)):
                for name in ("pyrt", "podman") if r % 2 else ("podman", "pyrt"):
                    us = int(runs[name](inside_loop(f"http://{addr[name]}:8080/small", BATCH)))
                    results.setdefault(f"c2c request: {name}", []).append(us / 1000 / BATCH)
            for r in range(max(2, a.big // BIG_BATCH)):
                for name in ("pyrt", "podman") if r % 2 else ("podman", "pyrt"):
                    url = f"http://{addr[name]}:8080/big"
                    us = int(runs[name](inside_loop(url, BIG_BATCH)))
                    results.setdefault(f"c2c 64 MiB: {name}", []).append(BIG * BIG_BATCH / us)
    finally:
        for name in made:
            subprocess.run([*podman, "rm", "-f", "-t", "0", name], capture_output=True)
        subprocess.run([*podman, "network", "rm", "-f", net_name], capture_output=True)


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        n = 0
        while chunk := resp.read(1 << 20):
            n += len(chunk)
        return n
    finally:
        conn.close()


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            get(port, "/small")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def as_user(name: str) -> None:
    """Runs this benchmark again as ``name``, with a home and a runtime directory of its own;
    exits with its status."""
    import pwd

    pw = pwd.getpwnam(name)
    home = Path(tempfile.mkdtemp(prefix="pyrt-bench-home-", dir="/var/tmp"))
    (home / "run").mkdir()
    for d in (home, home / "run"):
        os.chown(d, pw.pw_uid, pw.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYRT_", "XDG_"))}
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"))
    argv = [a for i, a in enumerate(sys.argv[1:])
            if a != "--as-user" and (i == 0 or sys.argv[i] != "--as-user")]  # fmt: skip
    code = subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
         sys.executable, str(Path(__file__).resolve()), *argv],
        env=env, cwd=home, check=False,
    ).returncode  # fmt: skip
    shutil.rmtree(home, ignore_errors=True)
    sys.exit(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--requests", type=int, default=300)
    ap.add_argument("--big", type=int, default=8, help="downloads of the 64 MiB file")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--as-user", metavar="NAME", help="run rootless, as this user")
    a = ap.parse_args()
    if a.as_user and os.geteuid() == 0:
        as_user(a.as_user)
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-net-", dir="/var/tmp"))
    podman = podman_cmd(work / "podman")
    if os.geteuid() != 0:
        # Rootless podman on this machine's hybrid cgroups: cgroupfs, and no journal.
        podman += ["--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    results: dict[str, list[float]] = {}
    cid = None
    try:
        root = make_busybox_rootfs(work / "rootfs")
        (root / "www").mkdir()
        (root / "www" / "big").write_bytes(os.urandom(BIG))
        (root / "www" / "small").write_bytes(b"x")
        tar = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
        subprocess.run(
            [*podman, "import", str(tar), "localhost/bb-net"], check=True, capture_output=True
        )
        server = ["httpd", "-f", "-p", "8080", "-h", "/www"]
        img = pyrt.Image.load(root)
        with pyrt.Container(img, server, network="private", ports={8080: None}) as c, \
                pyrt.Network() as net:  # fmt: skip
            member = pyrt.Container(img, server, network=net, ports={8080: None}).start()
            ports = {"pyrt": c.port(8080), "pyrt net": member.port(8080)}
            ports["podman"] = 18000 + os.getpid() % 1000
            cid = subprocess.run(
                [
                    *podman,
                    "run",
                    "-d",
                    "--ulimit",
                    "nofile=1024:1024",
                    "--ulimit",
                    "nproc=1024:1024",
                    "-p",
                    f"127.0.0.1:{ports['podman']}:8080",
                    "localhost/bb-net",
                    *server,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for p in ports.values():
                wait_ready(p)
            for r in range(a.requests):
                order = list(ports.items()) if r % 2 else list(reversed(ports.items()))
                for name, p in order:
                    t0 = time.perf_counter()
                    get(p, "/small")
                    results.setdefault(f"request: {name}", []).append(
                        (time.perf_counter() - t0) * 1000
                    )
            for r in range(a.big):
                order = list(ports.items()) if r % 2 else list(reversed(ports.items()))
                for name, p in order:
                    t0 = time.perf_counter()
                    assert get(p, "/big") == BIG
                    results.setdefault(f"64 MiB: {name}", []).append(
                        BIG / (time.perf_counter() - t0) / 1e6
                    )
        container_to_container(a, img, podman, server, results)
    finally:
        if cid:
            subprocess.run([*podman, "rm", "-f", "-t", "0", cid], capture_output=True)
        subprocess.run([*podman, "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'':22} {'median':>10} {'p95':>10}  ratio to podman")
    for name, xs in results.items():
        m = statistics.median(xs)
        p95 = sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.95))]
        unit = "ms" if "request" in name else "MB/s"
        peer = statistics.median(results[name.split(":")[0] + ": podman"])
        print(f"{name:22} {m:7.2f} {unit:4} {p95:7.2f}  {m / peer:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
