"""Sandbox cycles: what a test pays for a fresh container to work in, against one bwrap run of
/bin/true on the same rootfs (the cheapest peer's cheapest sandbox).

- cycle: start a `sleep` container, one exec of /bin/true in it, remove it;
- pooled cycle: `pool.acquire()`, one exec, release (a pyrt.Pool of 2; the reset happens in
  the pool's thread, off the caller's path);
- the same two with the pytest `sandbox` fixture's containers: pyrt's init as pid 1 standing
  in for the idle command (`pyrt.config.idle`: nothing of the image runs at a start or reset);
- exec alone, in a running container, for scale.

The kinds take turns within each round (`bench_start.interleave`).

Run as root:  python benches/bench_pool.py [-n ROUNDS] [--json FILE] [--state-tmpfs]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_start import (
    HERE,
    interleave,
    reexec_in_private_mount_ns,
    report,
    state_on_tmpfs,
    summarize,
)

import pyrt
from pyrt.config.idle import IDLE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--rounds", type=int, default=200)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--state-tmpfs",
        action="store_true",
        help="pyrt's run state on a tmpfs (as /run is on most machines; see bench_start)",
    )
    args = ap.parse_args()
    if args.state_tmpfs:
        reexec_in_private_mount_ns()
        state_on_tmpfs()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-"))
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        img = pyrt.Image.load(rootfs)
        dn = subprocess.DEVNULL
        bwrap = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", str(rootfs), "/",
                 "--proc", "/proc", "--dev", "/dev", "/bin/true"]  # fmt: skip
        idle = ["sleep", "3600"]

        def cycle() -> None:
            with pyrt.Container(img, idle) as c:
                c.exec(["/bin/true"], check=True)

        def sandbox_cycle() -> None:
            with pyrt.Container(img, IDLE, init=True) as c:
                c.exec(["/bin/true"], check=True)

        with (
            pyrt.Pool(img, idle, size=2) as pool,
            pyrt.Pool(img, IDLE, size=2, init=True) as sandboxes,
            pyrt.Container(img, idle) as running,
        ):

            def pooled() -> None:
                with pool.acquire() as c:
                    c.exec(["/bin/true"], check=True)

            def pooled_sandbox() -> None:
                with sandboxes.acquire() as c:
                    c.exec(["/bin/true"], check=True)

            times = interleave(
                {
                    "bwrap run": lambda: (
                        subprocess.run(bwrap, stdout=dn, stderr=dn, check=True) and None
                    ),
                    "pyrt cycle": cycle,
                    "pyrt pooled cycle": pooled,
                    "pyrt sandbox cycle": sandbox_cycle,
                    "pyrt pooled sandbox": pooled_sandbox,
                    "pyrt exec": lambda: running.exec(["/bin/true"], check=True) and None,
                },
                args.rounds,
            )
        rows = summarize(times, lambda _name: "bwrap run", peer="bwrap")
        report("sandbox cycles", rows, 18, args.json, args.rounds, peer="bwrap")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
