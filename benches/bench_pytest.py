"""The example suite (examples/sandbox_suite, 200 tests each in a fresh sandbox) under pytest:
pyrt's `sandbox` fixture against the same suite with bwrap and with plain subprocess (the floor),
wall time of the whole pytest run, best of a few runs, taking turns, with bytecode caches.

Run as root:  python benches/bench_pytest.py [-r REPEATS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = Path(__file__).resolve().parent.parent / "examples" / "sandbox_suite"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-r", "--repeats", type=int, default=5)
    args = ap.parse_args()
    files = {
        "subprocess": ["test_subprocess.py"],
        "bwrap": ["test_bwrap.py"],
        "pyrt pooled": ["test_pyrt.py"],  # the plugin's default: a warm pool of 2
        "pyrt unpooled": ["test_pyrt.py", "--pyrt-pool=0"],
    }
    # As a user's machine runs a suite: with bytecode caches. Without them (a shell with
    # PYTHONDONTWRITEBYTECODE) every run compiles pyrt, the test files and their rewritten
    # asserts from source, 0.5 s that drowns what is measured. The caches go to a directory of
    # the benchmark's; a first round, not counted, fills them.
    cache = tempfile.TemporaryDirectory(prefix="pyrt-bench-pyc-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache.name
    best: dict[str, float] = {}
    for round_ in range(args.repeats + 1):
        for name, (f, *extra) in files.items():
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE / f),
                 *extra],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            dt = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"{f} failed:\n{r.stdout[-2000:]}")
            if round_ > 0:
                best[name] = min(best.get(name, dt), dt)
    cache.cleanup()
    floor = best["subprocess"]
    print(f"200 tests, each in a fresh sandbox, whole pytest run, best of {args.repeats}")
    print(f"{'suite':14} {'seconds':>8} {'ms/test over floor':>20} {'x bwrap':>8}")
    for name, dt in best.items():
        print(f"{name:14} {dt:>8.2f} {(dt - floor) / 200 * 1000:>20.2f} {dt / best['bwrap']:>8.2f}")


if __name__ == "__main__":
    main()
