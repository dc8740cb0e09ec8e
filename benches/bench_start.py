"""Start-to-exit latency of /bin/true in a busybox rootfs, from one Python process.

pyrt.run against `crun run` and `runc run` on the same rootfs and bundle, `bwrap`, and a bare
`subprocess.run(["/bin/true"])` (the floor). The tools take turns within each round, so drift
of the machine hits all of them alike; the result is medians and p95s, and ratios to crun.

Run as root:  python benches/bench_start.py [-n ROUNDS] [--json FILE] [--floor BIN]
              [--limits] [--state-tmpfs]

crun 1.8 (Debian 12) refuses a hybrid cgroup layout whose v2 tree has a controller, as this VM's
has (hugetlb). The benchmark therefore re-executes itself in a private mount namespace with
/sys/fs/cgroup/unified unmounted; that changes nothing for the others.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import pyrt

HERE = Path(__file__).resolve().parent

NS_FLAG = "PYRT_BENCH_IN_NS"


def reexec_in_private_mount_ns() -> None:
    if os.environ.get(NS_FLAG):
        subprocess.run(["umount", "/sys/fs/cgroup/unified"], stderr=subprocess.DEVNULL)
        return
    env = dict(os.environ, **{NS_FLAG: "1"})
    cmd = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
    os.execvpe("unshare", cmd, env)


def state_on_tmpfs() -> Path:
    """pyrt's run state (container directories, their overlay upper and work directories) on a
    tmpfs mounted in this benchmark's private mount namespace, gone with it: where it is on a
    machine whose /run is a tmpfs (systemd's), and where the C floor keeps its overlay's upper
    layer. This VM's /run is ext4 without a journal, whose inode allocation scans the inodes
    deleted in the last 30 s: each overlay mount (its work directory probes) costs 0.33 ms
    there. Call before the first container."""
    assert os.environ.get(NS_FLAG), "only inside the benchmark's own mount namespace"
    d = Path(tempfile.mkdtemp(prefix="pyrt-bench-state-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0711", "tmpfs", str(d)], check=True)
    os.environ["PYRT_STATE"] = str(d)

    def gone() -> None:  # (the mount goes with the namespace; its mount point is the host's)
        subprocess.run(["umount", "-l", str(d)], stderr=subprocess.DEVNULL)
        with contextlib.suppress(OSError):
            d.rmdir()

    atexit.register(gone)
    return d


def make_bundle(root: Path, rootfs: Path, limits: bool) -> Path:
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(rootfs)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    # The same seccomp policy pyrt applies by default: the same work for every runtime.
    from pyrt.oci.seccomp import default_profile
    from pyrt.oci.spec import DEFAULT_CAPABILITIES

    cfg["linux"]["seccomp"] = default_profile(frozenset(DEFAULT_CAPABILITIES))
    if limits:
        cfg["linux"]["resources"] = {
            "memory": {"limit": 256 << 20, "swap": 256 << 20},
            "pids": {"limit": 100},
        }
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def interleave(
    tools: dict[str, Callable[[], None]], rounds: int, warmup: int = 5
) -> dict[str, list[float]]:
    """Milliseconds per call of each tool: ``warmup`` calls each (page cache, pyrt's child
    memfd, interpreter paths), then rounds in which every tool takes a turn, in alternating
    order, so that the machine's drift hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in tools}
    for fn in tools.values():
        for _ in range(warmup):
            fn()
    for r in range(rounds):
        order = list(tools.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarize(
    times: dict[str, list[float]], baseline: Callable[[str], str], peer: str = "crun"
) -> list[dict[str, object]]:
    """Median, p95 and the ratio of each tool's median to its baseline's (``peer``'s, same
    work), as ``ratio_to_<peer>``."""
    rows: list[dict[str, object]] = []
    for name, xs in times.items():
        med = statistics.median(xs)
        base = statistics.median(times[baseline(name)])
        rows.append({"tool": name, "median_ms": round(med, 3),
                     "p95_ms": round(percentile(xs, 0.95), 3),
                     f"ratio_to_{peer}": round(med / base, 3)})  # fmt: skip
    return rows


def print_rows(rows: list[dict[str, object]], width: int, peer: str = "crun") -> None:
    print(f"{'tool':{width}} {'median ms':>10} {'p95 ms':>10} {'x ' + peer:>8}")
    for r in rows:
        print(f"{r['tool']:{width}} {r['median_ms']:>10.2f} {r['p95_ms']:>10.2f} "
              f"{r[f'ratio_to_{peer}']:>8.2f}")  # fmt: skip


def report(title: str, rows: list[dict[str, object]], width: int, json_out: Optional[Path],
           rounds: int, peer: str = "crun") -> None:  # fmt: skip
    """The table on stdout (``title`` above it, with the machine), and the rows as JSON."""
    print(f"{title}, {rounds} interleaved rounds, kernel {os.uname().release}, "
          f"{os.cpu_count()} cpus")  # fmt: skip
    print_rows(rows, width, peer)
    if json_out:
        json_out.write_text(json.dumps({"rounds": rounds, "rows": rows}, indent=1))


def floor_row(binary: Path, rootfs: Path, rounds: int,
              times: dict[str, list[float]]) -> dict[str, object]:  # fmt: skip
    """The C floor's median and p95 for the same isolation, from its RESULT line."""
    out = subprocess.run(
        ["unshare", "-m", str(binary), "-r", str(rootfs), "-v", "-P", "-N", "-d", "-o",
         "-n", str(max(rounds, 50))],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    words = line.split()
    med = float(words[words.index("median") + 1])
    p95 = float(words[words.index("p95") + 1])
    crun = statistics.median(times["crun run"])
    return {"tool": "C floor (mini)", "median_ms": med, "p95_ms": p95,
            "ratio_to_crun": round(med / crun, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--rounds", type=int, default=300)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--limits", action="store_true", help="memory 256m + pids 100 for pyrt, crun and runc"
    )
    ap.add_argument(
        "--state-tmpfs",
        action="store_true",
        help="pyrt's run state on a tmpfs (as /run is on most machines; see state_on_tmpfs)",
    )
    ap.add_argument(
        "--floor",
        type=Path,
        help="the C floor's binary (../shared/tools/mini-container.c built with gcc -O2 "
        "-pthread), run on the same rootfs after the rounds with the isolation pyrt.run has "
        "(-v -P -N -d -o: no cgroup, as pyrt.run without limits makes none; -2 would need the "
        "v2 tree this benchmark unmounts)",
    )
    args = ap.parse_args()
    reexec_in_private_mount_ns()
    if args.state_tmpfs:
        state_on_tmpfs()

    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-"))
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        bundle = make_bundle(work, rootfs, args.limits)
        lim = {"memory": "256m", "pids_limit": 100} if args.limits else {}
        img = pyrt.Image.load(rootfs)
        dn = subprocess.DEVNULL
        counter = iter(range(10**9))

        def peer(argv: list[str]) -> Callable[[], None]:
            return lambda: subprocess.run(argv, stdout=dn, stderr=dn, check=True)

        def oci(tool: str) -> Callable[[], None]:
            def run() -> None:
                cid = f"bench-{os.getpid()}-{next(counter)}"
                subprocess.run([tool, "run", "--bundle", str(bundle), cid],
                               stdin=dn, stdout=dn, stderr=dn, check=True)  # fmt: skip

            return run

        tools: dict[str, Callable[[], None]] = {
            "bare subprocess": peer(["/bin/true"]),
            "pyrt.run": lambda: pyrt.run(img, ["/bin/true"], check=True, **lim) and None,
            "bwrap": peer(["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind",
                           str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "/bin/true"]),
            "crun run": oci("crun"),
            "runc run": oci("runc"),
        }  # fmt: skip
        if args.limits:
            # bwrap and a bare process have no limits to set: not the same work.
            del tools["bwrap"], tools["bare subprocess"]
        times = interleave(tools, args.rounds)
        rows = summarize(times, lambda _name: "crun run")
        if args.floor:
            rows.append(floor_row(args.floor, rootfs, args.rounds, times))
        title = (
            f"start-to-exit of /bin/true{' with limits' if args.limits else ''}"
            f"{', pyrt state on a tmpfs' if args.state_tmpfs else ''}"
        )
        report(title, rows, 18, args.json, args.rounds)
        if args.floor and "bwrap" in times:
            pyrt_ms = statistics.median(times["pyrt.run"])
            print(f"pyrt.run / bwrap {pyrt_ms / statistics.median(times['bwrap']):.2f}, "
                  f"pyrt.run / C floor {pyrt_ms / float(rows[-1]['median_ms']):.2f}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
