"""Unpack throughput of one large gzip layer: pyrt against `umoci unpack`, `skopeo copy` + GNU
tar, and GNU tar alone (the floor: no verification, no safety checks).

The layer is a Debian rootfs (`debootstrap --variant=minbase bookworm`, made once and kept in
/var/tmp/debian-rootfs) or any directory given with --source. It goes into an OCI layout once;
then each round every tool unpacks it into a fresh directory (pyrt: a fresh store, so the layer
is really unpacked, with its digests verified), taking turns in alternating order.

Run as root:  python benches/bench_unpack.py [--source DIR] [-n ROUNDS] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_start import interleave

DEBIAN = Path("/var/tmp/debian-rootfs")


def debian_rootfs() -> Path:
    if not (DEBIAN / "usr" / "bin").is_dir():
        print("making a Debian rootfs with debootstrap (once)...", file=sys.stderr)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "bookworm",
                str(DEBIAN),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
        )
    return DEBIAN


def make_layout(src: Path, dest: Path) -> tuple[Path, int, int]:
    """An OCI layout with one gzip layer of ``src``; returns it, the uncompressed size and the
    number of entries."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = subprocess.run(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(src), "-cf", "-", "."],
        capture_output=True,
        check=True,
    ).stdout
    entries = subprocess.run(["tar", "-tf", "-"], input=tar, capture_output=True, check=True)
    layer = gzip.compress(tar, compresslevel=6)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h

    diff = "sha256:" + hashlib.sha256(tar).hexdigest()
    cfg = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff]}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": put(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "t"},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return dest, len(tar), len(entries.stdout.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help="directory to pack as the layer")
    ap.add_argument("-n", "--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    src = a.source or debian_rootfs()
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-unpack-", dir="/var/tmp"))
    try:
        layout, size, entries = make_layout(src, work / "layout")
        layer_blob = next(
            p for p in (layout / "blobs" / "sha256").iterdir() if p.stat().st_size > 4096
        )

        def fresh(name: str) -> Path:
            p = work / name
            shutil.rmtree(p, ignore_errors=True)
            return p

        def run_pyrt() -> None:
            store = fresh("store")
            os.environ["PYRT_ROOT"] = str(store)
            pyrt.Image.load(layout, progress=False)

        def run_umoci() -> None:
            subprocess.run(
                ["umoci", "unpack", "--image", f"{layout}:t", str(fresh("umoci"))],
                check=True,
                capture_output=True,
            )

        def run_skopeo_tar() -> None:
            d, r = fresh("skopeo"), fresh("skopeo-root")
            subprocess.run(
                ["skopeo", "copy", f"oci:{layout}:t", f"dir:{d}"], check=True, capture_output=True
            )
            r.mkdir()
            blob = max(d.iterdir(), key=lambda p: p.stat().st_size)
            subprocess.run(["tar", "--numeric-owner", "-xzf", str(blob), "-C", str(r)], check=True)

        def run_tar() -> None:
            r = fresh("tar")
            r.mkdir()
            subprocess.run(
                ["tar", "--numeric-owner", "-xzf", str(layer_blob), "-C", str(r)], check=True
            )

        tools: dict[str, Callable[[], None]] = {"pyrt": run_pyrt}
        if shutil.which("umoci"):
            tools["umoci unpack"] = run_umoci
        if shutil.which("skopeo"):
            tools["skopeo + tar"] = run_skopeo_tar
        tools["tar -xzf (floor)"] = run_tar
        # One warm-up each (page cache, code paths): a round here takes seconds.
        times = {k: [ms / 1000 for ms in v] for k, v in interleave(tools, a.rounds, 1).items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = statistics.median(times.get("umoci unpack") or times["pyrt"])
    mb = size / 1e6
    print(f"layer: {src} — {mb:.0f} MB uncompressed, {entries} entries; {a.rounds} rounds")
    print(f"{'tool':20} {'median s':>9} {'MB/s':>7} {'vs umoci':>9}")
    out = {"source": str(src), "bytes": size, "entries": entries, "rounds": a.rounds, "tools": {}}
    for name, xs in times.items():
        m = statistics.median(xs)
        print(f"{name:20} {m:9.2f} {mb / m:7.0f} {m / ref:8.2f}x")
        out["tools"][name] = {"median_s": m, "all_s": xs}  # type: ignore[index]
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
