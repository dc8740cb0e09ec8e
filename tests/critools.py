"""A containerd of one's own, for the CRI test and benchmark: its config with a runtime
handler per OCI runtime binary, images of the busybox root made with umoci and skopeo
(Debian's), and the CRI runtime service over its socket."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc as cri_rpc

CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/c.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:1"
  # (This machine's root lacks CAP_SYS_RESOURCE: no oom_score_adj below containerd's own.)
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "{default}"
{handlers}"""

HANDLER = """    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
        BinaryName = "{binary}"
"""


def oci_archive(d: Path, rootfs: Path, name: str, *config: str) -> Path:
    """An OCI archive of ``rootfs`` as one layer, with this ``umoci config``."""
    layout = d / f"layout-{name}"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:1"], check=True)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:1", str(rootfs), "/"],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run(["umoci", "config", "--image", f"{layout}:1", *config], check=True)
    archive = d / f"{name}.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:1", f"oci-archive:{archive}:1"],
                   check=True, capture_output=True)  # fmt: skip
    return archive


@contextlib.contextmanager
def containerd(
    d: Path, rootfs: Path, handlers: Mapping[str, str]
) -> Iterator[tuple[Any, list[str]]]:
    """A containerd in ``d`` with a CRI runtime handler per (name, runtime binary), the
    images localhost/pause:1 (sleeps) and localhost/bb:1; yields (the CRI runtime service,
    the ctr command line of its k8s.io namespace). Stopped, and its mounts gone, after."""
    for sub in ("cni-bin", "cni-conf"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    text = "".join(HANDLER.format(name=n, binary=b) for n, b in handlers.items())
    (d / "config.toml").write_text(CONFIG.format(d=d, default=next(iter(handlers)), handlers=text))
    with open(d / "log", "w") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(d / "config.toml")],
                                  stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
    ctr = ["ctr", "--address", str(d / "c.sock"), "-n", "k8s.io"]
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([*ctr, "version"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, (d / "log").read_text()[-2000:]
            time.sleep(0.1)
        path = ["--config.env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        pause = ["--config.entrypoint", "/bin/sleep", "--config.cmd", "2147483647"]
        for name, cfg in (("pause", pause), ("bb", ["--config.cmd", "sh"])):
            archive = oci_archive(d, rootfs, name, *path, *cfg)
            subprocess.run([*ctr, "images", "import", "--base-name", f"localhost/{name}",
                            str(archive)], check=True, capture_output=True)  # fmt: skip
        channel = grpc.insecure_channel(f"unix://{d}/c.sock")
        try:
            yield cri_rpc.RuntimeServiceStub(channel), ctr
        finally:
            channel.close()
    finally:
        daemon.terminate()
        daemon.wait(20)
        subprocess.run(["umount", "-R", str(d / "root")], capture_output=True)
