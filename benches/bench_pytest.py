"""The example suite (examples/sandbox_suite, 200 tests each in a fresh sandbox) under pytest:
pyrt's `sandbox` fixture against the same suite with bwrap and with plain subprocess (the floor),
wall time of the whole pytest run, best of a few runs, taking turns.

Run as root:  python benches/bench_pytest.py [-r REPEATS]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SUITE = Path(__file__).resolve().parent.parent / "examples" / "sandbox_suite"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeats", type=int, default=3)
    args = ap.parse_args()
    files = {
        "subprocess": ["test_subprocess.py"],
        "bwrap": ["test_bwrap.py"],
        "pyrt pooled": ["test_pyrt.py"],  # the plugin's default: a warm pool of 2
        "pyrt unpooled": ["test_pyrt.py", "--pyrt-pool=0"],
    }
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, (f, *extra) in files.items():
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE / f),
                 *extra],
                capture_output=True, text=True,
            )  # fmt: skip
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"{f} failed:\n{r.stdout[-2000:]}")
            best[name] = min(best.get(name, dt), dt)
    floor = best["subprocess"]
    print(f"200 tests, each in a fresh sandbox, whole pytest run, best of {args.repeats}")
    print(f"{'suite':14} {'seconds':>8} {'ms/test over floor':>20} {'x bwrap':>8}")
    for name, dt in best.items():
        print(f"{name:14} {dt:>8.2f} {(dt - floor) / 200 * 1000:>20.2f} {dt / best['bwrap']:>8.2f}")


if __name__ == "__main__":
    main()
