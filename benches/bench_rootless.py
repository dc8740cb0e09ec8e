"""Rootless start-to-exit latency of /bin/true in a busybox rootfs, as an ordinary user: pyrt
(a user namespace of its own, the caller as root, a subordinate range when the user has one)
against `bwrap --unshare-all` and rootless `runc run` (a bundle from `runc spec --rootless`) on
the same rootfs, taking turns. Rootless crun is left out: crun 1.8 refuses this VM's hybrid
cgroup layout, and an unprivileged user cannot unmount the v2 tree to appease it as
bench_start.py does as root.

Run as an unprivileged user:  python benches/bench_rootless.py [-n ROUNDS] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyrt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_start import interleave, percentile  # noqa: E402

from helpers import make_busybox_rootfs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=200)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if os.geteuid() == 0:
        sys.exit("bench_rootless.py measures rootless containers: run it as an ordinary user")
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-rootless-"))
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        img = pyrt.Image.load(rootfs)
        bundle = work / "bundle"
        bundle.mkdir()
        subprocess.run(["runc", "spec", "--rootless"], cwd=bundle, check=True)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["/bin/true"]
        cfg["root"] = {"path": str(rootfs), "readonly": True}
        (bundle / "config.json").write_text(json.dumps(cfg))
        n = iter(range(10**9))

        def runc() -> None:
            subprocess.run(
                ["runc", "--root", str(work / "runc"), "run", "-b", str(bundle), f"b{next(n)}"],
                check=True,
            )

        bwrap = [
            "bwrap",
            "--unshare-all",
            "--bind",
            str(rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ]
        tools: dict[str, Callable[[], None]] = {
            "pyrt.run (rootless)": lambda: pyrt.run(img, ["/bin/true"], check=True) and None,
            "bwrap --unshare-all": lambda: subprocess.run(bwrap, check=True) and None,
            "runc run (rootless)": runc,
        }
        times = interleave(tools, a.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = statistics.median(times["runc run (rootless)"])
    print(f"{'tool':24} {'median ms':>10} {'p95 ms':>8} {'x runc':>7}")
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"{name:24} {m:10.2f} {percentile(xs, 0.95):8.2f} {m / ref:7.2f}")
    if a.json:
        a.json.write_text(json.dumps(times, indent=1))


if __name__ == "__main__":
    main()
