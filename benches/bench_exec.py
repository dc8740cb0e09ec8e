"""Exec latency into a running container: `Container.exec(["/bin/true"])` against `crun exec`
and `runc exec` into containers of the same rootfs, taking turns within each round. A second
pyrt row execs into a container in a user namespace of its own (`rootless=True`, as every
rootless container has), which its exec server serves from the second exec on.

Run as root:  python benches/bench_exec.py [-n ROUNDS]
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

from bench_start import (  # noqa: E402
    interleave,
    make_bundle,
    percentile,
    reexec_in_private_mount_ns,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--rounds", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reexec_in_private_mount_ns()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-"))
    dn = subprocess.DEVNULL
    ids: list[tuple[str, str]] = []
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        bundle = make_bundle(work, rootfs, False)
        cfg = json.loads((bundle / "config.json").read_text())
        cfg["process"]["args"] = ["sleep", "3600"]
        (bundle / "config.json").write_text(json.dumps(cfg))
        for tool in ("crun", "runc"):
            cid = f"bench-exec-{tool}-{os.getpid()}"
            subprocess.run([tool, "run", "-d", "--bundle", str(bundle), cid],
                           stdin=dn, stdout=dn, stderr=dn, check=True)  # fmt: skip
            ids.append((tool, cid))
        c = pyrt.Container(pyrt.Image.load(rootfs), ["sleep", "3600"])
        c.start()
        u = pyrt.Container(pyrt.Image.load(rootfs), ["sleep", "3600"], rootless=True)
        u.start()

        def peer(tool: str, cid: str) -> Callable[[], None]:
            argv = [tool, "exec", cid, "/bin/true"]
            return lambda: subprocess.run(argv, stdin=dn, stdout=dn, stderr=dn, check=True) and None

        tools: dict[str, Callable[[], None]] = {
            "pyrt exec": lambda: c.exec(["/bin/true"], check=True) and None,
            "pyrt exec userns": lambda: u.exec(["/bin/true"], check=True) and None,
            **{f"{t} exec": peer(t, cid) for t, cid in ids},
        }
        times = interleave(tools, args.rounds)
        c.remove()
        u.remove()
        base = statistics.median(times["crun exec"])
        print(f"exec of /bin/true into a running container, {args.rounds} interleaved rounds")
        print(f"{'tool':16} {'median ms':>10} {'p95 ms':>10} {'x crun':>8}")
        rows = []
        for name, xs in times.items():
            med = statistics.median(xs)
            p95 = percentile(xs, 0.95)
            print(f"{name:16} {med:>10.2f} {p95:>10.2f} {med / base:>8.2f}")
            rows.append({"tool": name, "median_ms": round(med, 3), "p95_ms": round(p95, 3),
                         "ratio_to_crun": round(med / base, 3)})  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"rounds": args.rounds, "rows": rows}, indent=1))
    finally:
        for tool, cid in ids:
            subprocess.run([tool, "delete", "-f", cid], stdout=dn, stderr=dn)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
