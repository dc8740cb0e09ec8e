"""Kubernetes' view: a kubelet stand-in drives containerd (Debian's 1.6) over the CRI gRPC API
(the `container-runtime-interface-api` bindings), with pyrt-runc as the binary of a `pyrt`
runtime handler: a pod sandbox, two containers sharing its pid namespace, ExecSync,
UpdateContainerResources, stop and remove. Each step is checked from inside the containers or
on the host. The daemon, its config and its images are the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2 as cri
from critools import containerd
from ocitools import _pyrt_runc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containerd as root")


#: The pods' parent cgroup, which the kubelet would own: made by the runtime, removed here.
PARENT = "kubepods-cri-test"


@pytest.fixture(scope="module")
def cri_api(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(runtime service, the ctr command line) of the test's own daemon."""
    assert shutil.which("containerd"), "containerd is not installed (.ci/run installs it)"
    with containerd(tmp_path_factory.mktemp("cri"), rootfs, {"pyrt": _pyrt_runc()}) as api:
        yield api


def _exec(rt: Any, cid: str, script: str) -> str:
    r = rt.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=20))
    assert r.exit_code == 0, r.stderr.decode()
    return str(r.stdout.decode())


def test_a_pod_of_two_containers_through_the_cri(cri_api: Any) -> None:
    rt, ctr = cri_api
    pod_ns = cri.NamespaceOption(network=cri.NODE, pid=cri.POD, ipc=cri.POD)
    pod_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="pod1", uid="uid-pod1", namespace="pyrt", attempt=0),
        # (With the node's network the pod has the node's uts namespace too: no hostname.)
        log_directory="",
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=f"/{PARENT}",
            security_context=cri.LinuxSandboxSecurityContext(namespace_options=pod_ns),
        ),
    )
    pod = rt.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config, runtime_handler="pyrt"))
    pod_id = pod.pod_sandbox_id
    ids: list[str] = []
    try:
        for name, cmd in (("app", ["sleep", "3601"]), ("side", ["sleep", "3602"])):
            config = cri.ContainerConfig(
                metadata=cri.ContainerMetadata(name=name, attempt=0),
                image=cri.ImageSpec(image="localhost/bb:1"),
                command=cmd,
                linux=cri.LinuxContainerConfig(
                    security_context=cri.LinuxContainerSecurityContext(namespace_options=pod_ns)
                ),
            )
            c = rt.CreateContainer(cri.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))  # fmt: skip
            rt.StartContainer(cri.StartContainerRequest(container_id=c.container_id))
            ids.append(c.container_id)
        app, side = ids
        # The pod's pid namespace: each container sees the other's process and the sandbox's.
        seen = _exec(rt, side, "readlink /proc/self/ns/pid; ps -o args")
        assert "sleep 3601" in seen and "sleep 3602" in seen and "sleep 2147483647" in seen, seen
        assert "containerd" not in seen, seen  # the pod's namespace, not the host's
        status = rt.ContainerStatus(cri.ContainerStatusRequest(container_id=app, verbose=True))
        pid = json.loads(status.info["info"])["pid"]
        assert (
            seen.split()[0]
            == os.readlink(f"/proc/{pid}/ns/pid")
            != os.readlink("/proc/self/ns/pid")
        )
        # UpdateContainerResources: the limit lands in the container's cgroup on the host.
        rt.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
            container_id=app,
            linux=cri.LinuxContainerResources(memory_limit_in_bytes=96 << 20)))  # fmt: skip
        with open(f"/proc/{pid}/cgroup") as f:
            mem = next(ln.split(":", 2)[2].strip() for ln in f if ":memory:" in ln)
        limit = Path(f"/sys/fs/cgroup/memory{mem}/memory.limit_in_bytes").read_text()
        assert int(limit) == 96 << 20
        # Stop and remove: the processes go, and containerd has no task of the pod left.
        for cid in ids:
            rt.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=2))
            rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        ids.clear()
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        for cid in ids:
            rt.RemoveContainer(cri.RemoveContainerRequest(container_id=cid))
        rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        for parent in Path("/sys/fs/cgroup").glob(f"*/{PARENT}"):
            parent.rmdir()
    tasks = subprocess.run([*ctr, "task", "ls", "-q"], capture_output=True, text=True).stdout
    assert tasks.strip() == ""
