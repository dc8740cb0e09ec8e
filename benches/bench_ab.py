"""Before and after: the start path (or the exec path) of two builds of pyrt, in one run.

Each build is an interpreter with its own pyrt installed (e.g. a venv made from an older
commit). Rounds alternate which goes first; in each, a fresh process of each build times
``pyrt.run`` of /bin/true in the same busybox rootfs (with ``--exec``: ``Container.exec`` of
/bin/true into a running container of it; with ``--cycle``: the sandbox cycle of
``bench_pool.py``, a ``sleep`` container started, one exec, removed; with ``--pooled``: a test
of the pytest sandbox's kind, a pooled container of the host image acquired, one shell exec,
released, then 4 ms of the test's own work while the pool resets, spent asleep, or with
``--busy`` running Python, as pytest's own work between tests does; with ``--reset``: what a
pool's thread does for each test, a host-image sandbox reset, its exec server started again,
and one exec through it). The result is each build's
median of the round medians and the ratio after/before.

Run as root:  python benches/bench_ab.py --before OLD/.venv/bin/python \\
                  --after .venv/bin/python [-n 200] [--rounds 6]
                  [--exec | --cycle | --pooled [--busy] | --reset]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run by each build's interpreter, before a kind's code: time_steps(step) runs step(i) 20
# times to warm up, then n timed times, and prints the median in ms (`rest`: a pause after each
# step, the test's own work while a pool resets: running Python when argv[3] is "busy").
SETUP = """
import statistics, sys, time
import pyrt
img = pyrt.Image.load(sys.argv[1])
def time_steps(step, rest=0.0):
    for i in range(20):
        step(i)
    times = []
    for i in range(int(sys.argv[2])):
        t = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t)
        if sys.argv[3] == "busy":
            t += rest + times[-1]
            while time.perf_counter() < t:
                pass
        else:
            time.sleep(rest)
    print(statistics.median(times) * 1000)
"""

RUN = """
time_steps(lambda i: pyrt.run(img, ["/bin/true"], check=True))
"""

# An exec into a running container.
EXEC = """
with pyrt.Container(img, ["sleep", "3600"]) as c:
    time_steps(lambda i: c.exec(["/bin/true"], check=True))
"""

# A sandbox cycle: start, one exec, remove.
CYCLE = """
def cycle(i):
    with pyrt.Container(img, ["sleep", "3600"]) as c:
        c.exec(["/bin/true"], check=True)
time_steps(cycle)
"""

# A pooled sandbox's test, as the pytest plugin's sandbox fixture serves it.
POOLED = """
from pyrt.config.idle import IDLE
with pyrt.Pool(pyrt.Image.host(), IDLE, size=2, init=True) as pool:
    def test(i):
        with pool.acquire() as c:
            r = c.exec(["sh", "-c", f"echo $(({i} * {i})) > /tmp/out; cat /tmp/out"])
            assert r.stdout == f"{i * i}\\n".encode()
    time_steps(test, rest=0.004)
"""

# What a pool's thread does for each test: a sandbox of the host image (the plugin's default)
# reset, its exec server started again, and the next test's exec (through it).
RESET = """
from pyrt.config.idle import IDLE
with pyrt.Container(pyrt.Image.host(), IDLE, init=True) as c:
    def reset(i):
        c.reset()
        c._warm_exec_server()
        c.exec(["/bin/true"], check=True)
    time_steps(reset)
"""


def one(python: str, rootfs: Path, n: int, program: str, busy: bool) -> float:
    out = subprocess.run(
        [python, "-c", program, str(rootfs), str(n), "busy" if busy else "asleep"],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the older build's python")
    ap.add_argument("--after", required=True, help="the newer build's python")
    ap.add_argument("-n", type=int, default=200, help="starts per round and build")
    ap.add_argument("--rounds", type=int, default=6)
    kind = ap.add_mutually_exclusive_group()
    kind.add_argument("--exec", action="store_true", help="time exec instead of run")
    kind.add_argument("--cycle", action="store_true", help="time start, exec and remove")
    kind.add_argument("--pooled", action="store_true", help="time a pooled sandbox's test")
    kind.add_argument("--reset", action="store_true", help="time a pool's work for a test")
    ap.add_argument("--busy", action="store_true", help="--pooled: the test's work runs Python")
    args = ap.parse_args()
    kind, what = (
        (EXEC, "Container.exec of /bin/true")
        if args.exec
        else (CYCLE, "a sandbox cycle (start, exec, remove)")
        if args.cycle
        else (POOLED, "a pooled sandbox's test (acquire, exec, release)")
        if args.pooled
        else (RESET, "a pool's work for a test (reset, exec server, one exec)")
        if args.reset
        else (RUN, "pyrt.run of /bin/true")
    )
    program = SETUP + kind
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    with tempfile.TemporaryDirectory() as tmp:
        rootfs = make_busybox_rootfs(Path(tmp) / "rootfs")
        got: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for which in order:
                got[which].append(one(getattr(args, which), rootfs, args.n, program, args.busy))
        before, after = (statistics.median(got[k]) for k in ("before", "after"))
        what += ", the test's work in Python" if args.busy else ""
        print(f"{what}, median of {args.rounds} rounds x {args.n} each")
        print(f"  before {before:6.2f} ms   rounds: {', '.join(f'{x:.2f}' for x in got['before'])}")
        print(f"  after  {after:6.2f} ms   rounds: {', '.join(f'{x:.2f}' for x in got['after'])}")
        print(f"  after/before: {after / before:.3f}")


if __name__ == "__main__":
    main()
