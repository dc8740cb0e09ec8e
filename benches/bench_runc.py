"""pyrt-runc against crun and runc on the same bundle (a busybox root, /bin/true, pyrt's default
seccomp policy), as an orchestrator calls them: `run`, and `create` + `start` + `delete` (what
containerd's shim does for each container). Interleaved rounds; medians, p95s and ratios.

    sudo .venv/bin/python benches/bench_runc.py -n 200 --json benches/results/runc.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench_start import (
    HERE,
    interleave,
    make_bundle,
    reexec_in_private_mount_ns,
    report,
    summarize,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--rounds", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reexec_in_private_mount_ns()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    pyrt_runc = str(Path(sys.executable).parent / "pyrt-runc")
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-"))
    dn = subprocess.DEVNULL
    counter = iter(range(10**9))
    try:
        bundle = make_bundle(work, make_busybox_rootfs(work / "rootfs"), False)

        def call(argv: list[str]) -> None:
            subprocess.run(argv, stdin=dn, stdout=dn, stderr=dn, check=True)

        def run(tool: str) -> Callable[[], None]:
            root = str(work / f"state-{os.path.basename(tool)}")
            return lambda: call(
                [tool, "--root", root, "run", "--bundle", str(bundle), f"b{next(counter)}"]
            )

        def lifecycle(tool: str) -> Callable[[], None]:
            root = str(work / f"state-{os.path.basename(tool)}")

            def go() -> None:
                cid = f"b{next(counter)}"
                call([tool, "--root", root, "create", "--bundle", str(bundle), cid])
                call([tool, "--root", root, "start", cid])
                # /bin/true ends at once; delete waits for nothing but the exit.
                subprocess.run([tool, "--root", root, "delete", "--force", cid],
                               stdout=dn, stderr=dn, check=True)  # fmt: skip

            return go

        tools: dict[str, Callable[[], None]] = {}
        for name, tool in (("pyrt-runc", pyrt_runc), ("crun", "crun"), ("runc", "runc")):
            tools[f"{name} run"] = run(tool)
        for name, tool in (("pyrt-runc", pyrt_runc), ("crun", "crun"), ("runc", "runc")):
            tools[f"{name} create+start+delete"] = lifecycle(tool)
        times = interleave(tools, args.rounds)
        rows = summarize(times, lambda name: "crun " + name.split(" ", 1)[1])
        report("pyrt-runc, crun and runc", rows, 32, args.json, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
