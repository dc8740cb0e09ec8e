"""Before and after: the start path (or the exec path) of two builds of pyrt, in one run.

Each build is an interpreter with its own pyrt installed (e.g. a venv made from an older
commit). Rounds alternate which goes first; in each, a fresh process of each build times
``pyrt.run`` of /bin/true in the same busybox rootfs (with ``--exec``: ``Container.exec`` of
/bin/true into a running container of it; with ``--cycle``: the sandbox cycle of
``bench_pool.py``, a ``sleep`` container started, one exec, removed; with ``--pooled``: a test
of the pytest sandbox's kind, a pooled container of the host image acquired, one shell exec,
released, then 4 ms of the test's own work while the pool resets). The result is each build's
median of the round medians and the ratio after/before.

Run as root:  python benches/bench_ab.py --before OLD/.venv/bin/python \\
                  --after .venv/bin/python [-n 200] [--rounds 6] [--exec | --cycle | --pooled]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run by each build's interpreter: n timed starts after a warm-up; prints the median in ms.
PROBE = """
import statistics, sys, time
import pyrt
img = pyrt.Image.load(sys.argv[1])
for _ in range(20):
    pyrt.run(img, ["/bin/true"], check=True)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    pyrt.run(img, ["/bin/true"], check=True)
    times.append(time.perf_counter() - t)
print(statistics.median(times) * 1000)
"""

# The same for an exec into a running container.
PROBE_EXEC = """
import statistics, sys, time
import pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sleep", "3600"])
c.start()
for _ in range(20):
    c.exec(["/bin/true"], check=True)
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    c.exec(["/bin/true"], check=True)
    times.append(time.perf_counter() - t)
c.remove()
print(statistics.median(times) * 1000)
"""

# A sandbox cycle: start, one exec, remove.
PROBE_CYCLE = """
import statistics, sys, time
import pyrt
img = pyrt.Image.load(sys.argv[1])
def cycle():
    with pyrt.Container(img, ["sleep", "3600"]) as c:
        c.exec(["/bin/true"], check=True)
for _ in range(20):
    cycle()
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    cycle()
    times.append(time.perf_counter() - t)
print(statistics.median(times) * 1000)
"""

# A pooled sandbox's test, as the pytest plugin's sandbox fixture serves it.
PROBE_POOLED = """
import statistics, sys, time
import pyrt
from pyrt.config.idle import IDLE
with pyrt.Pool(pyrt.Image.host(), IDLE, size=2, init=True) as pool:
    def test(i):
        with pool.acquire() as c:
            r = c.exec(["sh", "-c", f"echo $(({i} * {i})) > /tmp/out; cat /tmp/out"])
            assert r.stdout == f"{i * i}\\n".encode()
    for i in range(20):
        test(i)
    times = []
    for i in range(int(sys.argv[2])):
        t = time.perf_counter()
        test(i)
        times.append(time.perf_counter() - t)
        time.sleep(0.004)
print(statistics.median(times) * 1000)
"""


def one(python: str, rootfs: Path, n: int, probe: str) -> float:
    out = subprocess.run(
        [python, "-c", probe, str(rootfs), str(n)],
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
    args = ap.parse_args()
    probe, what = (
        (PROBE_EXEC, "Container.exec of /bin/true")
        if args.exec
        else (PROBE_CYCLE, "a sandbox cycle (start, exec, remove)")
        if args.cycle
        else (PROBE_POOLED, "a pooled sandbox's test (acquire, exec, release)")
        if args.pooled
        else (PROBE, "pyrt.run of /bin/true")
    )
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    with tempfile.TemporaryDirectory() as tmp:
        rootfs = make_busybox_rootfs(Path(tmp) / "rootfs")
        got: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for which in order:
                got[which].append(one(getattr(args, which), rootfs, args.n, probe))
        before, after = (statistics.median(got[k]) for k in ("before", "after"))
        print(f"{what}, median of {args.rounds} rounds x {args.n} each")
        print(f"  before {before:6.2f} ms   rounds: {', '.join(f'{x:.2f}' for x in got['before'])}")
        print(f"  after  {after:6.2f} ms   rounds: {', '.join(f'{x:.2f}' for x in got['after'])}")
        print(f"  after/before: {after / before:.3f}")


if __name__ == "__main__":
    main()
