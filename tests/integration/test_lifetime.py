"""A container lives no longer than the Python process that started it, and starting many from
many threads at once neither hangs, crashes nor leaks."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import pyrt
from helpers import assert_nothing_left_of
from pyrt.host.collect import collect_stale
from pyrt.host.state import containers_root


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.stress
def test_500_containers_from_8_threads_while_others_allocate(image: pyrt.Image) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def allocate() -> None:
        # Churn the allocator and the GIL: the spawn path must not depend on either.
        while not stop.is_set():
            junk = [bytearray(4096) for _ in range(256)]
            junk += [str(i) * 10 for i in range(2000)]
            del junk

    def spawn(n: int, tid: int) -> None:
        try:
            for i in range(n):
                r = pyrt.run(image, ["sh", "-c", f"echo {tid}-{i}"], timeout=60)
                assert r.returncode == 0 and r.stdout == f"{tid}-{i}\n".encode()
        except BaseException as e:
            errors.append(e)

    # The first spawn makes the child's memfd, once per process; the first from a thread
    # other than the main one starts the spawner thread.
    warm = threading.Thread(target=pyrt.run, args=(image, ["true"]))
    warm.start()
    warm.join()
    # What earlier tests left to the garbage collector (a Popen's pipes) would otherwise
    # close during this one, and the count below would fall.
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    allocators = [threading.Thread(target=allocate) for _ in range(3)]
    workers = [threading.Thread(target=spawn, args=(63 if t < 4 else 62, t)) for t in range(8)]
    for t in allocators + workers:
        t.start()
    for t in workers:
        t.join(timeout=300)
    stop.set()
    for t in allocators:
        t.join()
    assert not any(t.is_alive() for t in workers), "a spawning thread hung"
    assert not errors, errors[:3]
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert os.listdir(containers_root()) == []


@pytest.mark.stress
@pytest.mark.parametrize("userns", [False, True], ids=["plain", "userns"])
def test_the_main_thread_clones_itself_through_a_signal_storm(
    image: pyrt.Image, userns: bool
) -> None:
    """The main thread clones its containers and execs itself, every signal blocked for the
    while: with other threads allocating and signals with a Python handler arriving all along,
    every start and exec works (each exec's output once: an exec server's answer interrupted
    by a signal once made the command run a second time, the ordinary way), the handler runs,
    the container is removed (the duplicate's zombie kept its pid namespace from ending) and
    nothing is left."""
    assert threading.current_thread() is threading.main_thread()
    stop = threading.Event()
    seen: list[int] = []

    def allocate() -> None:
        while not stop.is_set():
            junk = [bytearray(4096) for _ in range(256)]
            del junk

    def storm() -> None:
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.0005)

    old = signal.signal(signal.SIGUSR1, lambda *_: seen.append(1))
    # What a process makes once (the log thread, the reaper helper, our pid namespace's
    # descriptor), before the count.
    with pyrt.Container(image, ["sleep", "60"], memory="64m", rootless=userns) as c:
        for _ in range(3):
            c.exec(["true"])
    pyrt.run(image, ["true"])
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    others = [threading.Thread(target=allocate), threading.Thread(target=storm)]
    try:
        for t in others:
            t.start()
        with pyrt.Container(image, ["sleep", "60"], memory="64m", rootless=userns) as c:
            for i in range(100):
                r = pyrt.run(image, ["sh", "-c", f"echo {i}"], timeout=60)
                assert r.returncode == 0 and r.stdout == f"{i}\n".encode()
                assert c.exec(["sh", "-c", f"echo {i}"], timeout=60).stdout == f"{i}\n".encode()
    finally:
        stop.set()
        for t in others:
            t.join()
        signal.signal(signal.SIGUSR1, old)
    assert len(seen) > 10
    # The main thread's signal mask is what it was: nothing left blocked.
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds_before
    assert os.listdir(containers_root()) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.skipif(not Path("/sys/fs/cgroup/cpuset/tasks").exists(),
                    reason="no v1 cpuset hierarchy (on v2 a child is moved into its cgroup after "
                           "clone: no thread of ours steps in)")  # fmt: skip
def test_the_main_thread_comes_back_from_a_cpuset_with_its_affinity(rootfs: Path) -> None:
    """The main thread steps into a container's cgroups to clone it (v1 `tasks`), a cpuset's
    too: it comes back to its own, with the CPU affinity it had (a cpuset's attach overwrote
    it before Linux 6.2; `run_here` puts it back)."""
    import json

    from pyrt import _core
    from pyrt.oci import spec

    assert threading.current_thread() is threading.main_thread()
    doc = spec.build(spec.ContainerSpec(root=spec.RootSpec(str(rootfs)),
                                        process=spec.ProcessSpec(["/bin/true"])))  # fmt: skip
    doc["linux"]["resources"] = {"cpu": {"cpus": "0", "mems": "0"}}
    doc["linux"]["cgroupsPath"] = f"pyrt-affinity-{os.getpid()}"
    mine = Path("/proc/thread-self/cgroup").read_text()
    before = os.sched_getaffinity(0)
    last = max(before)
    os.sched_setaffinity(0, {last})
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        p = _core.spawn(json.dumps(doc), devnull, devnull, devnull)
        try:
            assert any(x.startswith("/sys/fs/cgroup/cpuset/") for x in p.cgroup_paths())
            assert os.sched_getaffinity(0) == {last}
            assert Path("/proc/thread-self/cgroup").read_text() == mine
            assert p.wait(30) == 0
        finally:
            p.kill(signal.SIGKILL)
            p.wait(30)
            p.destroy_cgroup()
    finally:
        os.close(devnull)
        os.sched_setaffinity(0, before)


def test_container_started_from_a_thread_outlives_the_thread(image: pyrt.Image) -> None:
    # The parent-death signal follows the thread that cloned; pyrt clones from its own
    # long-lived thread, so a worker thread's exit must not kill the container.
    box: list[pyrt.Container] = []
    t = threading.Thread(target=lambda: box.append(pyrt.Container(image, ["sleep", "60"]).start()))
    t.start()
    t.join()
    c = box[0]
    try:
        time.sleep(0.2)
        assert c.status == "running"
    finally:
        c.remove()


CHILD = """
import sys, pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sh", "-c", "sleep 1000 & sleep 1000"])
c.start()
print(c.pid, c.id, flush=True)
sys.stdin.read()
"""


def test_sigkill_of_the_parent_kills_the_container(rootfs: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(rootfs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        pid, cid = int(line[0]), line[1]
        # The container's processes as seen from the host: its init and the background sleep.
        children_file = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 10
        while not children_file.read_text().split() and time.monotonic() < deadline:
            time.sleep(0.01)
        children = [int(x) for x in children_file.read_text().split()]
        assert _alive(pid) and children
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 10
    while any(_alive(x) for x in [pid, *children]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(x) for x in [pid, *children]), "a container process survived"
    assert_nothing_left_of(cid)


def test_stale_collection_leaves_live_containers_alone(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "60"]) as c:
        assert c.id not in collect_stale()
        assert (containers_root() / c.id).exists()


FROZEN_CHILD = """
import sys, pyrt
from pyrt.host import cgroupfreeze
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sleep", "1000"]).start()
assert cgroupfreeze.freeze(c._proc.cgroup_paths())  # as a commit in progress leaves it
print(c.pid, c.id, flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups of root containers")
def test_owner_killed_during_a_freeze_leaves_nothing(rootfs: Path) -> None:
    """The owner dies while the container is frozen (in the middle of a commit): on cgroup v1
    the frozen init cannot act on its parent-death SIGKILL, so stale collection thaws first."""
    p = subprocess.Popen([sys.executable, "-c", FROZEN_CHILD, str(rootfs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    pid, cid = p.stdout.readline().split()
    p.kill()
    p.wait()
    assert_nothing_left_of(cid)
    assert not _alive(int(pid)), "the frozen container's init survived"


FROZEN_EXEC_CHILD = """
import sys, threading, time, pyrt
from pyrt.host import cgroupfreeze
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sleep", "1000"]).start()
assert cgroupfreeze.freeze(c._proc.cgroup_paths())
threading.Thread(target=lambda: c.exec(["true"]), daemon=True).start()
time.sleep(0.5)  # the exec's clone now waits on the frozen cgroup
print(c.pid, c.id, flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups of root containers")
def test_owner_killed_while_an_exec_waits_on_a_frozen_container_leaves_nothing(
    rootfs: Path,
) -> None:
    """A thread of the owner that is cloning into a frozen container cannot die until the
    freeze is lifted, so the killed owner never ends and never closes its reaper's pipe. The
    reaper notices the owner's main thread is gone, thaws and kills the container, and the
    owner can end; then what is left of it is collected."""
    p = subprocess.Popen([sys.executable, "-c", FROZEN_EXEC_CHILD, str(rootfs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    pid, cid = p.stdout.readline().split()
    p.kill()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for state in Path("/sys/fs/cgroup/freezer").glob("pyrt-*/freezer.state"):
            state.write_text("THAWED")
        p.wait()
        pytest.fail("the killed owner could not end: its container stayed frozen")
    assert_nothing_left_of(cid, within=15)
    assert not _alive(int(pid)), "the frozen container's init survived"


KILLED_WHILE = """
import sys, threading, pyrt
img = pyrt.Image.load(sys.argv[1])
what = sys.argv[2]
if what == "exec":
    c = pyrt.Container(img, ["sleep", "1000"]).start()
    print(c.id, flush=True)
    c.exec(["sleep", "1000"])
elif what in ("run-with-output", "scratch-run-with-output"):
    c = pyrt.Container(img, ["sh", "-c", "while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; done"])
    if what == "run-with-output":  # (a file given before: the run has a directory)
        c.write_file("/given", "x")
    threading.Timer(0.3, lambda: print(c.id, flush=True)).start()
    c.run()
elif what == "detached-with-limits":
    c = pyrt.Container(img, ["sleep", "1000"], memory="64m", pids_limit=50).start()
    print(c.id, flush=True)
    sys.stdin.read()
elif what == "with-a-bounded-layer":
    c = pyrt.Container(img, ["sh", "-c", "echo x > /f; exec sleep 1000"], disk="16m").start()
    c.wait_for_file("/f", timeout=10)
    print(c.id, flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(
    "what",
    ["exec", "run-with-output", "scratch-run-with-output", "detached-with-limits",
     "with-a-bounded-layer"],
)  # fmt: skip
def test_owner_killed_while_busy_leaves_nothing_within_2s(rootfs: Path, what: str) -> None:
    if what == "detached-with-limits" and os.geteuid() != 0:
        pytest.skip("limits need root here (no delegated cgroup v2 subtree)")
    if what == "with-a-bounded-layer" and os.geteuid() != 0:
        pytest.skip("disk= needs root (its tmpfs is mounted on the host)")
    p = subprocess.Popen([sys.executable, "-c", KILLED_WHILE, str(rootfs), what],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    try:
        cid = p.stdout.readline().strip()
        # (A run with no directory has a scratch layer in its own namespace: nothing on disk.)
        assert cid and (containers_root() / cid).exists() == (what != "scratch-run-with-output")
        time.sleep(0.1)
    finally:
        p.kill()
        p.wait()
    assert_nothing_left_of(cid)


LOADING = """
import sys, pyrt
pyrt.Image.load(sys.argv[1])
"""


def test_owner_killed_during_a_load_leaves_nothing_after_gc(tmp_path: Path) -> None:
    from imagetools import Entry, make_layout

    big = [Entry(f"big{i}", os.urandom(8 << 20)) for i in range(12)]
    layout = make_layout(tmp_path / "lay", [big], compress=["gzip"])
    store = tmp_path / "store"
    env = dict(os.environ, PYRT_ROOT=str(store))
    p = subprocess.Popen([sys.executable, "-c", LOADING, str(layout)], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and p.poll() is None:
        if (store / "tmp").is_dir() and os.listdir(store / "tmp"):
            break
        time.sleep(0.002)
    assert p.poll() is None, "the load finished before it could be interrupted"
    p.kill()
    p.wait()
    gc = subprocess.run([sys.executable, "-m", "pyrt", "gc"], env=env, capture_output=True,
                        text=True)  # fmt: skip
    assert gc.returncode == 0, gc.stderr
    assert os.listdir(store / "tmp") == []
    assert not (store / "layers").exists() or os.listdir(store / "layers") == []
    # And the next load of the same image works.
    r = subprocess.run([sys.executable, "-c", LOADING, str(layout)], env=env)
    assert r.returncode == 0


def test_stale_collection_never_takes_a_directory_being_created(image: pyrt.Image) -> None:
    """Another thread's (or process's) collection runs while containers are made: a directory
    whose lock file exists is always locked already (it appears locked)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    taken: list[str] = []

    def collect() -> None:
        while not stop.is_set():
            taken.extend(collect_stale())

    def make() -> None:
        try:
            for _ in range(40):
                assert pyrt.run(image, ["true"]).returncode == 0
        except BaseException as e:
            errors.append(e)

    # (Earlier tests' dead owners may have left directories: collecting those is right.)
    before = set(os.listdir(containers_root()))
    collector = threading.Thread(target=collect)
    makers = [threading.Thread(target=make) for _ in range(2)]
    collector.start()
    for t in makers:
        t.start()
    for t in makers:
        t.join(120)
    stop.set()
    collector.join(30)
    assert not errors, errors
    assert set(taken) <= before, "a live container's directory was collected"


RUNS_THEN_DIES = """
import os, signal, sys, pyrt
img = pyrt.Image.load(sys.argv[1])
ids = []
for _ in range(30):
    c = pyrt.Container(img, ["sh", "-c", "echo data > /written"])
    c.run()
    ids.append(c.id)
print(" ".join(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_removed_directories_are_deleted_by_the_helper_even_when_the_owner_dies(
    rootfs: Path,
) -> None:
    """A removed container's directory leaves ``containers`` at once (moved to the trash) and
    the owner's helper deletes it, off the owner's path: also for the last ones when the
    owner is SIGKILLed right after removing them."""
    from pyrt.host.reaper import trash_root

    p = subprocess.run([sys.executable, "-c", RUNS_THEN_DIES, str(rootfs)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == -signal.SIGKILL, p.stderr
    ids = p.stdout.split()
    assert len(ids) == 30
    assert not [i for i in ids if (containers_root() / i).exists()]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [i for i in ids if (trash_root() / i).exists()]
        if not left:
            break
        time.sleep(0.05)
    assert not left, f"5 s after the owner died, still in the trash: {left}"


def _killed(script: str, *args: str, fault: str | None = None) -> str:
    """Runs ``script`` with ``args`` in a new interpreter that must die by SIGKILL at its
    fault point; the container id it printed."""
    env = dict(os.environ, PYRT_FAULT=fault) if fault else None
    p = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == -signal.SIGKILL, p.stderr
    return p.stdout.strip()


REMOVED_THEN_DIES = """
import sys, pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["true"])
c.write_file("/given", "x")  # (a file given before: the run has a directory to remove)
print(c.id, flush=True)
c.run()  # PYRT_FAULT=trashed: killed between the move into the trash and telling the helper
"""


def test_owner_killed_between_the_move_to_the_trash_and_the_hand_over(rootfs: Path) -> None:
    """The helper was never told to delete the directory, but still knows the id: it empties
    that trash entry when its owner dies, within the same 2 s as everything else."""
    from pyrt.host.reaper import trash_root

    cid = _killed(REMOVED_THEN_DIES, str(rootfs), fault="trashed")
    assert len(cid) == 32 and not (containers_root() / cid).exists()
    deadline = time.monotonic() + 2
    while (trash_root() / cid).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not (trash_root() / cid).exists()
    assert_nothing_left_of(cid)


#: A script's start: a running container of the image named by its first argument.
RUNNING = """
import os, sys, pyrt
img = pyrt.Image.load(sys.argv[1])
c = pyrt.Container(img, ["sleep", "60"]).start()
"""

RESET_THEN_DIES = (
    RUNNING
    + """
c.exec(["sh", "-c", "echo dirty > /dirty"])
print(c.id, flush=True)
os.environ["PYRT_FAULT"] = "trashed"
c.reset()  # killed once its old upper layer is in the trash, before the helper is told
"""
)


def test_owner_killed_between_a_resets_move_to_the_trash_and_the_hand_over(
    rootfs: Path,
) -> None:
    """A reset hands its old writable layer to the trash as "ID.upper.N": the helper empties
    such entries of its containers too when their owner dies."""
    from pyrt.host.reaper import trash_root

    cid = _killed(RESET_THEN_DIES, str(rootfs))
    assert len(cid) == 32

    def entries() -> list[str]:
        return [e for e in os.listdir(trash_root()) if e.startswith(cid)]

    deadline = time.monotonic() + 2
    while entries() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not entries()
    assert_nothing_left_of(cid)


COPY_THEN_DIES = (
    RUNNING
    + """
c.exec(["sh", "-c", "mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b"])
print(c.id, flush=True)
os.environ["PYRT_FAULT"] = "copied"
c.copy_out("/data", sys.argv[2])  # killed with the copy made, before it is put in place
"""
)


def test_owner_killed_in_the_middle_of_a_copy_out_leaves_nothing(
    rootfs: Path, tmp_path: Path
) -> None:
    """A copy_out to a new path is built in a staging directory beside it and renamed into
    place whole; an owner killed before the rename leaves nothing at the destination (before,
    a partial tree), and its helper deletes the staging directory within seconds."""
    dest = tmp_path / "out"
    cid = _killed(COPY_THEN_DIES, str(rootfs), str(dest))
    assert not dest.exists()
    deadline = time.monotonic() + 5
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.listdir(tmp_path), "the staging directory outlived its owner by 5 s"
    assert_nothing_left_of(cid)


def test_a_copy_out_appears_whole(image: pyrt.Image, tmp_path: Path) -> None:
    """The same copy, not killed: it is at its destination, and no staging directory is left
    beside it; a copy into an existing directory merges there."""
    with pyrt.Container(image, ["sleep", "60"]) as c:
        c.exec(["sh", "-c", "mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b"])
        c.copy_out("/data", tmp_path / "out")
        assert (tmp_path / "out" / "sub" / "b").read_text() == "two\n"
        assert os.listdir(tmp_path) == ["out"]
        (tmp_path / "into").mkdir()
        (tmp_path / "into" / "mine").write_text("kept")
        c.copy_out("/data/a", tmp_path / "into")
        assert sorted(os.listdir(tmp_path / "into")) == ["a", "mine"]
        assert sorted(os.listdir(tmp_path)) == ["into", "out"]


def test_gc_empties_what_a_dead_helper_left_in_the_trash(tmp_path: Path) -> None:
    """A trash entry nobody is deleting (its helper died first) goes at the next stale
    collection once it is older than the grace period; a young one is left to its helper."""
    from pyrt.host.collect import empty_stale_trash
    from pyrt.host.reaper import trash_root

    trash = trash_root()
    trash.mkdir(parents=True, exist_ok=True)
    old, young = trash / "test-old-entry", trash / "test-young-entry"
    for d in (old, young):
        (d / "upper" / "etc").mkdir(parents=True)
        (d / "upper" / "etc" / "f").write_text("x")
    time.sleep(0.3)
    young.rename(trash / "test-young-entry2")  # a rename sets its ctime: just moved there
    young = trash / "test-young-entry2"
    try:
        gone = empty_stale_trash(grace=0.2)
        assert "test-old-entry" in gone and not old.exists()
        assert young.exists() and "test-young-entry2" not in gone
    finally:
        import shutil

        shutil.rmtree(young, ignore_errors=True)
