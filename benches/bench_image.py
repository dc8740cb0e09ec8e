"""Running an image from a registry: the first run (pull + unpack + start of /bin/true) and a
cached run, pyrt against `podman run` of the same image from the same local registry
(Debian's docker-registry on 127.0.0.1, the image pushed by skopeo).

The image is a Debian rootfs (see bench_unpack.py) in one layer plus two small layers on top.
podman runs with its own --root (so the machine's storage is untouched), runc as its runtime
(Debian 12's crun refuses this VM's hybrid cgroup layout), and `--network none`; both sides
keep their default seccomp policy. A cached pyrt start of the layered image is also compared
with a start of the same tree as a plain rootfs directory: the goal is that layers cost nothing
but the lower directories of the one overlay mount that every start makes anyway.

Run as root:  python benches/bench_image.py [-n ROUNDS] [--first ROUNDS] [--json FILE]
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
import time
from collections.abc import Callable
from pathlib import Path

import pyrt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench_unpack import debian_rootfs, make_layout
from imagetools import registry


def add_layers(layout: Path, work: Path) -> None:
    """Two small layers on the Debian one (umoci repack), as real images have."""
    bundle = work / "bundle"
    for i in range(2):
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:t", str(bundle)],
            check=True,
            capture_output=True,
        )
        (bundle / "rootfs" / "etc" / f"layer{i}").write_text(f"{i}\n")
        subprocess.run(
            ["umoci", "repack", "--image", f"{layout}:t", str(bundle)],
            check=True,
            capture_output=True,
        )
        shutil.rmtree(bundle)


def podman(root: Path) -> list[str]:
    """podman with a storage of its own (the machine's stays untouched)."""
    return ["podman", "--root", str(root), "--runroot", f"{root}-run", "--runtime", "runc"]


def podman_run(root: Path, ref: str) -> list[str]:
    return [
        *podman(root), "run", "--rm", "--tls-verify=false", "--network", "none",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref, "/bin/true",
    ]  # fmt: skip


def ms_of(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=30)
    ap.add_argument("--first", type=int, default=3, help="rounds of first runs")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-image-", dir="/var/tmp"))
    roots: list[Path] = []
    results: dict[str, list[float]] = {}
    try:
        layout, _, _ = make_layout(debian_rootfs(), work / "layout")
        add_layers(layout, work)
        with registry(work / "registry") as reg:
            ref = reg.push(f"oci:{layout}:t", "debian:bench")

            def pyrt_first() -> None:
                img = pyrt.Image.pull(ref, insecure=True, progress=False)
                pyrt.run(img, ["/bin/true"], check=True)

            # Every first run gets a store of its own: deleting the previous one would leave
            # the disk busy (ext4 with discard) during the next one, for either tool.
            for i in range(a.first):
                os.environ["PYRT_ROOT"] = str(work / f"store-{i}")
                roots.append(work / f"podman-{i}")
                cmd = podman_run(roots[-1], ref)
                subprocess.run(["sync"])
                results.setdefault("first run: pyrt", []).append(ms_of(pyrt_first))
                subprocess.run(["sync"])
                results.setdefault("first run: podman", []).append(
                    ms_of(lambda c=cmd: subprocess.run(c, check=True, capture_output=True))
                )
            img = pyrt.Image.pull(ref, insecure=True, progress=False)
            flat = work / "flat"
            subprocess.run(["umoci", "unpack", "--image", f"{layout}:t", str(flat)],
                           check=True, capture_output=True)  # fmt: skip
            rootfs_img = pyrt.Image.load(flat / "rootfs")
            cached_cmd = podman_run(roots[-1], ref)
            cached: dict[str, Callable[[], object]] = {
                "cached run: pyrt (3 layers)": lambda: pyrt.run(img, ["/bin/true"], check=True),
                "cached run: pyrt (rootfs dir)": lambda: pyrt.run(
                    rootfs_img, ["/bin/true"], check=True
                ),
                "cached run: podman": lambda: subprocess.run(
                    cached_cmd, check=True, capture_output=True
                ),
            }
            for fn in cached.values():
                fn()
            for r in range(a.rounds):
                order = list(cached.items())
                if r % 2:
                    order.reverse()
                for name, fn in order:
                    results.setdefault(name, []).append(ms_of(fn))
    finally:
        for root in roots:
            subprocess.run([*podman(root), "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'':34} {'median ms':>10} {'p95 ms':>8}  ratio")
    base = {
        "first": statistics.median(results["first run: podman"]),
        "cached": statistics.median(results["cached run: podman"]),
    }
    for name, xs in results.items():
        m = statistics.median(xs)
        p95 = sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.95))]
        kind = "first" if name.startswith("first") else "cached"
        print(f"{name:34} {m:10.1f} {p95:8.1f}  {m / base[kind]:.2f}x podman")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
