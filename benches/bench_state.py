"""State operations against podman on the same work, in the same run: `copy_in` of a 100 MB tree
vs `podman cp`, `commit` of a 10 MB change vs `podman commit`, and `reset()` of a container that
changed a few files vs a fresh pyrt container of the same image and vs `podman restart`.

podman runs its containers with pyrt-runc as the runtime (Debian's crun refuses this VM's hybrid
cgroup layout; see bench_start.py), so the podman figures are podman's own work plus the
runtime's, as a podman user on such a machine gets them.

Run as root:  python benches/bench_state.py [-n ROUNDS] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyrt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_start import interleave, summarize

from helpers import make_busybox_rootfs

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def podman(*args: str) -> str:
    runtime = shutil.which("pyrt-runc") or str(Path(sys.executable).parent / "pyrt-runc")
    r = subprocess.run(["podman", "--runtime", runtime, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="rounds per operation")
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-state-"))
    rootfs = make_busybox_rootfs(work / "rootfs")
    tree = work / "tree"
    for d in range(10):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(10):
            (tree / f"d{d}" / f"f{f}").write_bytes(os.urandom(1 << 20))
    tar = work / "bb.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    ref = "localhost/pyrt-bench-state:latest"
    podman("import", "-q", str(tar), ref)
    img = pyrt.Image.load(rootfs)
    cid = podman("run", "-d", *ULIMITS, ref, "sleep", "3600").splitlines()[-1]
    c = pyrt.Container(img, ["sleep", "3600"]).start()
    n = {"i": 0}

    def nxt() -> int:
        n["i"] += 1
        return n["i"]

    change = "dd if=/dev/urandom of=/big bs=1M count=10 2>/dev/null; echo x > /etc/small"
    try:
        times = interleave(
            {
                "pyrt copy_in": lambda: c.copy_in(tree, f"/in{nxt()}"),
                "podman cp": lambda: podman("cp", str(tree), f"{cid}:/in{nxt()}") and None,
            },
            a.n,
            warmup=1,
        )
        # The containers' layers now hold the copies: clear them before the commit rounds.
        c.reset()
        podman("exec", cid, "sh", "-c", "rm -rf /in*")
        subprocess.run(["podman", "exec", cid, "sh", "-c", change], check=True)
        c.exec(["sh", "-c", change], check=True)
        commits: list[pyrt.Image] = []
        times.update(
            interleave(
                {
                    "pyrt commit": lambda: commits.append(c.commit()),
                    "podman commit": lambda: podman("commit", "-q", cid) and None,
                },
                a.n,
                warmup=1,
            )
        )

        def reset() -> None:
            c.exec(["sh", "-c", "echo a > /a; echo b > /etc/b; rm /etc/passwd"])
            c.reset()

        def fresh() -> None:
            pyrt.Container(img, ["sleep", "3600"]).start().remove()

        def restart() -> None:
            podman("restart", "-t", "0", cid)

        times.update(
            interleave(
                {"pyrt reset": reset, "pyrt fresh start+remove": fresh, "podman restart": restart},
                a.n * 4,
                warmup=2,
            )
        )
    finally:
        c.remove()
        subprocess.run(["podman", "rm", "-f", cid], capture_output=True)
        subprocess.run(["podman", "image", "prune", "-f"], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    peers = {
        "pyrt copy_in": "podman cp",
        "podman cp": "podman cp",
        "pyrt commit": "podman commit",
        "podman commit": "podman commit",
        "pyrt reset": "podman restart",
        "pyrt fresh start+remove": "podman restart",
        "podman restart": "podman restart",
    }
    rows = summarize(times, lambda name: peers[name])
    print(f"{'operation':26} {'median ms':>10} {'p95 ms':>10} {'x podman':>9}")
    for r in rows:
        print(f"{r['tool']!s:26} {r['median_ms']:>10.2f} {r['p95_ms']:>10.2f} "
              f"{r['ratio_to_crun']:>9.3f}")  # fmt: skip
    med = {str(r["tool"]): float(str(r["median_ms"])) for r in rows}
    print(f"reset / fresh pyrt start: {med['pyrt reset'] / med['pyrt fresh start+remove']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"rounds": a.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
