"""Where a pyrt.run of /bin/true spends its time, phase by phase, from the kernel's own clock.

The kernel's tracing ring buffer (tracefs) records every system call's entry and exit and every
exec, fork and exit of the runs, at well under a microsecond each (strace stops the process at
each call and costs more than the calls it measures). From that record, per run:

- fork -> child: from the clone to pyrt-child's start (its exec from the memfd);
- child setup: pyrt-child's work, from its start to the exec of the command;
- command: from that exec to the command's exit (busybox's start and /bin/true);
- exit -> next run: the kernel's teardown of the container at its last exit, then pyrt's
  Python after the exit and before the next clone.

Then pyrt-child's system calls by time spent in them, the time between them (its own code and
page faults), and each mount in order (the overlay root is one of them).

Run as root:  python benches/trace_start.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyrt

HERE = Path(__file__).resolve().parent
TRACEFS = Path("/sys/kernel/tracing")
EVENTS = (
    "raw_syscalls:sys_enter raw_syscalls:sys_exit sched:sched_process_exec "
    "sched:sched_process_fork sched:sched_process_exit"
)
# The calls pyrt-child makes, by x86-64 number (others are shown by number).
NAMES = {
    0: "read", 1: "write", 3: "close", 7: "poll", 8: "lseek", 9: "mmap", 11: "munmap",
    13: "rt_sigaction", 14: "rt_sigprocmask", 33: "dup2", 72: "fcntl", 80: "chdir",
    112: "setsid", 116: "setgroups", 125: "capget", 126: "capset", 155: "pivot_root",
    157: "prctl", 165: "mount", 166: "umount2", 257: "openat", 258: "mkdirat",
    259: "mknodat", 262: "newfstatat", 266: "symlinkat", 272: "unshare", 302: "prlimit64",
    308: "setns", 437: "openat2", 442: "mount_setattr",
}  # fmt: skip
LINE = re.compile(r"^\s*\S+-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+): (.*)$")


def record(runs: int) -> str:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from helpers import make_busybox_rootfs

    with tempfile.TemporaryDirectory() as tmp:
        img = pyrt.Image.load(make_busybox_rootfs(Path(tmp) / "rootfs"))
        for _ in range(30):
            pyrt.run(img, ["/bin/true"])
        # The ring buffer is the machine's: what was set before is put back afterwards.
        # (buffer_size_kb may read "7 (expanded: 1408)": its first word is the setting.)
        saved = {f: (TRACEFS / f).read_text().split()[0] for f in ("tracing_on", "buffer_size_kb")}
        saved_events = (TRACEFS / "set_event").read_text().split()
        (TRACEFS / "tracing_on").write_text("0")
        (TRACEFS / "trace").write_text("")
        (TRACEFS / "buffer_size_kb").write_text(str(max(4096, runs * 200)))
        (TRACEFS / "set_event").write_text(EVENTS)
        try:
            (TRACEFS / "tracing_on").write_text("1")
            for _ in range(runs):
                pyrt.run(img, ["/bin/true"])
            (TRACEFS / "tracing_on").write_text("0")
            return (TRACEFS / "trace").read_text()
        finally:
            (TRACEFS / "tracing_on").write_text("0")
            (TRACEFS / "set_event").write_text(" ".join(saved_events) + "\n")
            (TRACEFS / "trace").write_text("")
            for f, v in saved.items():
                (TRACEFS / f).write_text(v)


Event = tuple[float, str, str]


def by_pid(text: str) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = collections.defaultdict(list)
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            out[int(m.group(1))].append((float(m.group(2)), m.group(3), m.group(4)))
    return out


def setups(events: dict[int, list[Event]]) -> Iterator[list[Event]]:
    """Each child's events from its own start to the command's exec."""
    for es in events.values():
        execs = [i for i, (_, kind, _) in enumerate(es) if kind == "sched_process_exec"]
        if len(execs) >= 2:
            yield es[execs[0] : execs[1] + 1]


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=50)
    args = ap.parse_args()
    if not (TRACEFS / "tracing_on").exists():
        # A machine without systemd has nothing mount tracefs; it stays for the next run.
        import subprocess

        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True)
    events = by_pid(record(args.runs))

    forks: dict[int, float] = {}
    execs: dict[int, list[float]] = collections.defaultdict(list)
    exits: dict[int, float] = {}
    for pid, es in events.items():
        for t, kind, rest in es:
            if kind == "sched_process_fork":
                child = re.search(r"child_pid=(\d+)", rest)
                if child:
                    forks[int(child.group(1))] = t
            elif kind == "sched_process_exec":
                execs[pid].append(t)
            elif kind == "sched_process_exit" and "group_dead=true" in rest:
                exits[pid] = t
    runs = sorted(p for p in forks if len(execs[p]) >= 2 and p in exits)
    phases: dict[str, list[float]] = collections.defaultdict(list)
    for i, p in enumerate(runs):
        phases["fork -> child"].append(execs[p][0] - forks[p])
        phases["child setup"].append(execs[p][1] - execs[p][0])
        phases["command"].append(exits[p] - execs[p][1])
        if i + 1 < len(runs):
            phases["exit -> next run"].append(forks[runs[i + 1]] - exits[p])
    print(f"{len(runs)} runs of pyrt.run(/bin/true), medians in ms")
    for name, values in phases.items():
        print(f"  {name:18} {ms(values)}")

    spent: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    mounts: dict[int, list[float]] = collections.defaultdict(list)
    between = 0.0
    children = 0
    for seg in setups(events):
        children += 1
        last, start, n_mount = seg[0][0], None, 0
        for t, kind, rest in seg[1:]:
            nr = int(rest.split()[1]) if kind.startswith("sys_") else -1
            if kind == "sys_enter":
                between += t - last
                start = t
            elif kind == "sys_exit" and start is not None:
                name = NAMES.get(nr, str(nr))
                spent[name] += t - start
                calls[name] += 1
                if nr == 165:
                    mounts[n_mount].append(t - start)
                    n_mount += 1
                last, start = t, None
    if not children:
        sys.exit("no child's setup was recorded")
    print(f"\npyrt-child, per start: {sum(calls.values()) / children:.0f} system calls, "
          f"{between / children * 1000:.3f} ms between them")  # fmt: skip
    for name, t in sorted(spent.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  {name:14} {calls[name] / children:5.1f} calls  {t / children * 1000:.3f} ms")
    print("\nmounts in order, median us: " + ", ".join(
        f"{statistics.median(v) * 1e6:.0f}" for _, v in sorted(mounts.items())))  # fmt: skip


if __name__ == "__main__":
    main()
