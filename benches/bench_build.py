"""Building an image: pyrt against `buildah bud --layers` on the same Containerfile and context.

The file has the shape of a small service's: a builder stage with two RUNs, then a stage that
sets ENV and WORKDIR, copies a 200-file source tree (4 MiB), runs a step that writes 8 MiB,
copies the builder's output over, and sets the usual metadata. The base is the same busybox
OCI layout for both, read from disk.

- cold: an empty store each round (pyrt: a fresh PYRT_ROOT; buildah: a fresh --root), so the
  base is imported and every step runs;
- cached: the same build again on that store, nothing changed: no step runs.

pyrt is timed as the library call (`pyrt.build`, what a test suite does) and as the CLI
(`pyrt build`, a new Python process each time); buildah's RUN goes through runc (Debian's crun
refuses this VM's hybrid cgroup layout), with the vfs storage driver.

Run as root:  python benches/bench_build.py [-n ROUNDS] [--json FILE]
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
from pathlib import Path

import pyrt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import make_busybox_rootfs

CONTAINERFILE = """\
ARG BASE
FROM $BASE AS builder
RUN mkdir -p /out && for i in 1 2 3 4 5 6 7 8; do head -c 131072 /dev/urandom > /out/lib$i.so; done
RUN echo "built" > /out/BUILD_INFO

FROM $BASE
ENV APP_HOME=/srv/app MODE=production
WORKDIR $APP_HOME
COPY src/ ./src/
COPY config.ini /etc/app/config.ini
RUN mkdir -p /var/cache/app && head -c 8388608 /dev/zero > /var/cache/app/blob && ls src | wc -l
COPY --from=builder /out/ /usr/local/lib/app/
LABEL org.opencontainers.image.title="bench app" version="1.0"
EXPOSE 8080
USER 1000:1000
CMD ["sh", "-c", "cat /usr/local/lib/app/BUILD_INFO"]
"""


def context(d: Path) -> Path:
    (d / "src").mkdir(parents=True)
    for i in range(200):
        (d / "src" / f"module{i:03}.py").write_bytes(os.urandom(20 << 10))
    (d / "config.ini").write_text("[app]\nmode=production\n")
    (d / "Containerfile").write_text(CONTAINERFILE)
    return d


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": statistics.median(xs) * 1e3,
            "p95_ms": xs[min(len(xs) - 1, int(len(xs) * 0.95))] * 1e3}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5, help="rounds (each: a cold and a cached build)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (buildah's storage and runc need it)")
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-build-"))
    times: dict[str, list[float]] = {k: [] for k in (
        "pyrt cold", "pyrt cached", "pyrt CLI cold", "pyrt CLI cached",
        "buildah cold", "buildah cached")}  # fmt: skip
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        layout = work / "base"
        os.environ["PYRT_ROOT"] = str(work / "seed")
        pyrt.Image.load(rootfs).save(layout)
        ctx = context(work / "ctx")
        base = {"BASE": str(layout)}
        cli = [sys.executable, "-m", "pyrt", "build", "-q", "--build-arg", f"BASE={layout}",
               str(ctx)]  # fmt: skip
        # The command line as an installed package runs it: with its bytecode cached (a
        # PYTHONDONTWRITEBYTECODE in the caller's environment would compile every module anew).
        cli_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run([sys.executable, "-m", "pyrt", "images"], check=True,
                       capture_output=True, env=cli_env)  # fmt: skip
        for r in range(a.n):
            # The library call.
            os.environ["PYRT_ROOT"] = str(work / f"pyrt-{r}")
            t = time.perf_counter()
            first = pyrt.build(ctx, build_args=base, progress=False)
            times["pyrt cold"].append(time.perf_counter() - t)
            t = time.perf_counter()
            again = pyrt.build(ctx, build_args=base, progress=False)
            times["pyrt cached"].append(time.perf_counter() - t)
            assert again.id == first.id
            # The command line.
            env = {**cli_env, "PYRT_ROOT": str(work / f"pyrt-cli-{r}")}
            for key in ("pyrt CLI cold", "pyrt CLI cached"):
                t = time.perf_counter()
                subprocess.run(cli, check=True, capture_output=True, env=env)
                times[key].append(time.perf_counter() - t)
            # buildah.
            g = ["buildah", "--root", str(work / f"bah-{r}"), "--runroot",
                 str(work / f"bah-run-{r}"), "--storage-driver", "vfs"]  # fmt: skip
            bud = [*g, "bud", "--layers", "--runtime", "runc", "--build-arg",
                   f"BASE=oci:{layout}", "-t", "bench:1", str(ctx)]  # fmt: skip
            for key in ("buildah cold", "buildah cached"):
                t = time.perf_counter()
                subprocess.run(bud, check=True, capture_output=True)
                times[key].append(time.perf_counter() - t)
            subprocess.run([*g, "rmi", "--all", "--force"], capture_output=True)
            for d in (f"bah-{r}", f"bah-run-{r}", f"pyrt-{r}", f"pyrt-cli-{r}"):
                subprocess.run(["rm", "-rf", str(work / d)], check=False)
            print(f"round {r + 1}/{a.n} done", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    for key, xs in times.items():
        peer = "buildah cold" if "cold" in key else "buildah cached"
        row = {"tool": key, **stats(xs)}
        row["ratio_to_buildah"] = row["median_ms"] / (statistics.median(times[peer]) * 1e3)
        rows.append(row)
    print(f"{'build':18} {'median ms':>10} {'p95 ms':>10} {'x buildah':>10}")
    for row in rows:
        print(f"{row['tool']:18} {row['median_ms']:10.1f} {row['p95_ms']:10.1f} "
              f"{row['ratio_to_buildah']:10.3f}")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"rounds": a.n, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
