"""Kubernetes' start path: a pod sandbox and one container in it (RunPodSandbox,
CreateContainer, StartContainer), asked of containerd 1.6 over the CRI, with pyrt-runc, crun and
runc as the binaries of three runtime handlers of the same daemon. The pods use the node's
network (no CNI). Interleaved rounds; the teardown is not timed. Medians, p95s and ratios.
Then `ctr run --rm` of /bin/true on the same daemon and image, with each runtime as the runc
shim's binary (`--runc-binary`): start to exit and removal, as a user of ctr sees it.

    sudo .venv/bin/python benches/bench_cri.py -n 40 --json benches/results/cri.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_start import HERE, reexec_in_private_mount_ns, report, summarize


def pod_and_container(rt: Any, cri: Any, handler: str, n: int) -> tuple[float, str]:
    """Starts a pod with one container through ``handler``; (milliseconds, pod id)."""
    node = cri.NamespaceOption(network=cri.NODE, pid=cri.POD, ipc=cri.POD)
    pod_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=f"{handler}-{n}", uid=f"{handler}-{n}",
                                        namespace="bench", attempt=0),
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods-bench",
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=node),
        ),
    )  # fmt: skip
    config = cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name="c", attempt=0),
        image=cri.ImageSpec(image="localhost/bb:1"),
        command=["sleep", "3600"],
    )
    t = time.perf_counter()
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler=handler))
    c = rt.CreateContainer(cri.CreateContainerRequest(
        pod_sandbox_id=pod.pod_sandbox_id, config=config, sandbox_config=pod_config))  # fmt: skip
    rt.StartContainer(cri.StartContainerRequest(container_id=c.container_id))
    return (time.perf_counter() - t) * 1000, pod.pod_sandbox_id


def tear_down(rt: Any, cri: Any, pod_id: str) -> None:
    listing = rt.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=pod_id)))  # fmt: skip
    for c in listing.containers:
        rt.StopContainer(cri.StopContainerRequest(container_id=c.id, timeout=0))
        rt.RemoveContainer(cri.RemoveContainerRequest(container_id=c.id))
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


def ctr_run(ctr: list[str], binary: str, n: int) -> float:
    """Milliseconds of one ``ctr run --rm`` of /bin/true with ``binary`` as the runtime."""
    t = time.perf_counter()
    subprocess.run([*ctr, "run", "--rm", "--runc-binary", binary, "localhost/bb:1",
                    f"bench-ctr-{os.getpid()}-{n}", "/bin/true"],
                   check=True, capture_output=True)  # fmt: skip
    return (time.perf_counter() - t) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--rounds", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reexec_in_private_mount_ns()  # (crun 1.8 refuses this VM's hybrid layout otherwise)
    sys.path.insert(0, str(HERE.parent / "tests"))
    from cri_api.v1 import api_pb2 as cri
    from critools import containerd

    from helpers import make_busybox_rootfs

    handlers = {"pyrt-runc": str(Path(sys.executable).parent / "pyrt-runc")}
    for peer in ("crun", "runc"):
        found = shutil.which(peer)
        assert found, f"{peer} is not installed"
        handlers[peer] = found
    work = Path(tempfile.mkdtemp(prefix="pyrt-bench-cri-"))
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        with containerd(work / "containerd", rootfs, handlers) as (rt, ctr):
            times: dict[str, list[float]] = {h: [] for h in handlers}
            runs: dict[str, list[float]] = {f"ctr run {h}": [] for h in handlers}
            for r in range(args.rounds + 2):  # (the first two rounds warm up)
                order = list(handlers) if r % 2 == 0 else list(reversed(handlers))
                for h in order:
                    ms, pod_id = pod_and_container(rt, cri, h, r)
                    tear_down(rt, cri, pod_id)
                    run_ms = ctr_run(ctr, handlers[h], r)
                    if r >= 2:
                        times[h].append(ms)
                        runs[f"ctr run {h}"].append(run_ms)
        rows = summarize(times, lambda _: "crun")
        report("CRI RunPodSandbox + CreateContainer + StartContainer (containerd 1.6)", rows,
               12, args.json, args.rounds)  # fmt: skip
        report("ctr run --rm --runc-binary RUNTIME localhost/bb:1 /bin/true (containerd 1.6)",
               summarize(runs, lambda _: "ctr run crun"), 18, None, args.rounds)  # fmt: skip
    finally:
        # The pods' parent cgroup (the kubelet's, in a real node): emptied by the runtimes a
        # moment after the pods are gone (runc's unified one last).
        deadline = time.monotonic() + 10
        while left := list(Path("/sys/fs/cgroup").glob("*/kubepods-bench")):
            for top in left:
                if not (top.parent / "cgroup.procs").exists():
                    # (Not a cgroup: the unified tree this namespace unmounted for crun, under
                    # which runc made plain directories and files. Hidden on the host.)
                    shutil.rmtree(top, ignore_errors=True)
                for d, _, _ in os.walk(top, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(d)
            assert time.monotonic() < deadline, f"cgroups left: {left}"
            time.sleep(0.05)
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
