"""50 containers started at once until each is ready (has written "ready"): pyrt.aio on one
event loop, pyrt from 50 threads, and `crun run -d` for 50 bundles from asyncio subprocesses,
each then polling its log. Reports the wall time until all 50 are ready, best of a few runs.

Run as root:  python benches/bench_concurrent.py [-n CONTAINERS] [-r REPEATS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyrt

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_start import make_bundle, reexec_in_private_mount_ns  # noqa: E402

SCRIPT = "echo ready; sleep 30"


async def pyrt_aio(img: pyrt.Image, n: int) -> float:
    t0 = time.perf_counter()
    cs = [pyrt.aio.Container(img, ["sh", "-c", SCRIPT]) for _ in range(n)]

    async def one(c: pyrt.aio.Container) -> None:
        await c.start()
        await c.wait_for_log("ready", timeout=60)

    await asyncio.gather(*(one(c) for c in cs))
    dt = time.perf_counter() - t0
    await asyncio.gather(*(c.remove() for c in cs))
    return dt


def pyrt_threads(img: pyrt.Image, n: int) -> float:
    t0 = time.perf_counter()
    cs = [pyrt.Container(img, ["sh", "-c", SCRIPT]) for _ in range(n)]

    def one(c: pyrt.Container) -> None:
        c.start()
        c.wait_for_log("ready", timeout=60)

    with ThreadPoolExecutor(n) as ex:
        list(ex.map(one, cs))
    dt = time.perf_counter() - t0
    for c in cs:
        c.remove()
    return dt


async def crun(bundles: list[Path]) -> float:
    t0 = time.perf_counter()

    async def one(i: int, b: Path) -> None:
        log = b / "out.log"
        with open(log, "wb") as f:
            p = await asyncio.create_subprocess_exec(
                "crun", "run", "-d", "--bundle", str(b), f"bench-conc-{os.getpid()}-{i}",
                stdin=subprocess.DEVNULL, stdout=f, stderr=f,
            )  # fmt: skip
            await p.wait()
        while b"ready" not in log.read_bytes():
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bundles)))
    dt = time.perf_counter() - t0
    for i in range(len(bundles)):
        subprocess.run(["crun", "delete", "-f", f"bench-conc-{os.getpid()}-{i}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--containers", type=int, default=50)
    ap.add_argument("-r", "--repeats", type=int, default=3)
    args = ap.parse_args()
    reexec_in_private_mount_ns()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-"))
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        img = pyrt.Image.load(rootfs)
        bundles = []
        for i in range(args.containers):
            d = work / f"b{i}"
            d.mkdir()
            b = make_bundle(d, rootfs, False)
            cfg = json.loads((b / "config.json").read_text())
            cfg["process"]["args"] = ["sh", "-c", SCRIPT]
            (b / "config.json").write_text(json.dumps(cfg))
            bundles.append(b)
        res: dict[str, list[float]] = {"pyrt.aio": [], "pyrt, threads": [], "crun run -d": []}
        for _ in range(args.repeats):
            res["pyrt.aio"].append(asyncio.run(pyrt_aio(img, args.containers)))
            res["pyrt, threads"].append(pyrt_threads(img, args.containers))
            res["crun run -d"].append(asyncio.run(crun(bundles)))
        base = min(res["crun run -d"])
        print(f"{args.containers} containers started at once until all are ready, "
              f"best of {args.repeats}")  # fmt: skip
        print(f"{'tool':16} {'seconds':>8} {'x crun':>8}")
        for name, xs in res.items():
            print(f"{name:16} {min(xs):>8.3f} {min(xs) / base:>8.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
