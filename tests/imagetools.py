"""Test helpers for images: layouts built by umoci, skopeo and buildah, hand-made layouts and
layers (for shapes the tools will not make), a real registry, and the tree probe that compares
what a container sees."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import pyrt

HAVE_UMOCI = shutil.which("umoci") is not None
HAVE_SKOPEO = shutil.which("skopeo") is not None
HAVE_BUILDAH = shutil.which("buildah") is not None
HAVE_REGISTRY = shutil.which("docker-registry") is not None

#: Lists every path under the root (not /proc, /sys, /dev, nor the root itself, whose times
#: are the container's upper directory's) with type+mode, owner, size, mtime,
#: the link count of non-directories (overlayfs counts 1 for a merged directory), the
#: checksum of regular files and the target of symlinks.
TREE_PROBE = r"""
find / -xdev -mindepth 1 \( -path /proc -o -path /sys -o -path /dev \) -prune -o -print | sort |
while read f; do
  if [ -d "$f" ] && [ ! -L "$f" ]; then stat -c '%n|%f|%u|%g|%Y' "$f"
  else stat -c '%n|%f|%u|%g|%s|%Y|%h' "$f"; fi
  [ -f "$f" ] && [ ! -L "$f" ] && md5sum "$f"
  if [ -L "$f" ]; then readlink "$f"; fi
done
"""


def tree_seen_by_container(img: pyrt.Image) -> str:
    r = pyrt.run(
        img,
        ["/bin/sh", "-c", TREE_PROBE],
        entrypoint=[],
        user="0",
        workdir="/",
        text=True,
        check=True,
    )
    return r.stdout


def run(*args: str, **kw: Any) -> str:
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout


# --- umoci-built images ---------------------------------------------------------------


def umoci_two_layers(rootfs: Path, work: Path) -> Path:
    """An OCI layout ``work/layout`` with tag ``bb``: the busybox rootfs plus test files in one
    layer, and a second layer that deletes (whiteouts), replaces a directory, and adds; the
    config has a non-root User, Entrypoint + Cmd and WorkingDir."""
    layout = work / "layout"
    bundle = work / "bundle"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", f"{layout}:bb")
    run("umoci", "unpack", "--image", f"{layout}:bb", str(bundle))
    r = bundle / "rootfs"
    shutil.copytree(rootfs, r, symlinks=True, dirs_exist_ok=True)
    (r / "data").mkdir()
    (r / "data" / "keep").write_text("keep\n")
    (r / "data" / "gone").write_text("gone\n")
    (r / "old").mkdir()
    (r / "old" / "a").write_text("a\n")
    (r / "old" / "b").write_text("b\n")
    (r / "hl").mkdir()
    (r / "hl" / "one").write_text("linked\n")
    os.link(r / "hl" / "one", r / "hl" / "two")
    os.symlink("/data/keep", r / "lnk")
    os.symlink("../data", r / "hl" / "rel")
    (r / "srv").mkdir()
    os.chown(r / "srv", 1000, 1000)
    (r / "secret").write_text("for root\n")
    os.chmod(r / "secret", 0o600)
    run("umoci", "repack", "--image", f"{layout}:bb", str(bundle))
    shutil.rmtree(bundle)
    run("umoci", "unpack", "--image", f"{layout}:bb", str(bundle))
    (r / "data" / "gone").unlink()
    shutil.rmtree(r / "old")
    (r / "old").mkdir()
    (r / "old" / "c").write_text("c\n")
    (r / "data" / "added").write_text("added\n")
    os.chmod(r / "etc" / "marker", 0o640)
    run("umoci", "repack", "--image", f"{layout}:bb", str(bundle))
    shutil.rmtree(bundle)
    run(
        "umoci",
        "config",
        "--image",
        f"{layout}:bb",
        "--config.user",
        "app",
        "--config.entrypoint",
        "/bin/echo",
        "--config.entrypoint",
        "ep",
        "--config.cmd",
        "c1",
        "--config.cmd",
        "c2",
        "--config.workingdir",
        "/srv",
        "--config.env",
        "FROM_IMAGE=yes",
        "--config.exposedports",
        "8080/tcp",
        "--config.label",
        "org.example=1",
    )
    return layout


def umoci_unpacked(layout: Path, tag: str, dest: Path) -> Path:
    """The rootfs ``umoci unpack`` makes of the image: the reference to compare with."""
    run("umoci", "unpack", "--image", f"{layout}:{tag}", str(dest))
    return dest / "rootfs"


# --- hand-made layouts --------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    data: Optional[bytes] = None  # a regular file
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    pax: Optional[dict[str, str]] = None


def d(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, kind=tarfile.DIRTYPE, mode=mode)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type, ti.mode, ti.uid, ti.gid = e.kind, e.mode, e.uid, e.gid
            ti.mtime = 1_600_000_000
            ti.linkname = e.link
            if e.pax:
                ti.pax_headers = dict(e.pax)
            if e.data is not None:
                ti.size = len(e.data)
            tf.addfile(ti, io.BytesIO(e.data) if e.data is not None else None)
    return buf.getvalue()


def _compress(data: bytes, how: Optional[str]) -> tuple[bytes, str]:
    base = "application/vnd.oci.image.layer.v1.tar"
    if how == "gzip":
        return gzip.compress(data, mtime=0), base + "+gzip"
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data), base + "+zstd"
    return data, base


def _blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    p = layout / "blobs" / "sha256" / digest[7:]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return digest


def _json_blob(layout: Path, doc: Any) -> tuple[str, int]:
    data = json.dumps(doc).encode()
    return _blob(layout, data), len(data)


def image_manifest(
    layout: Path,
    layers: list[bytes],
    compress: list[Optional[str]],
    config: Optional[dict[str, Any]] = None,
    arch: str = "amd64",
    diff_ids: Optional[list[str]] = None,
) -> dict[str, Any]:
    """Writes the layer blobs, config and manifest of one image into ``layout``; returns the
    manifest's descriptor."""
    descs = []
    for data, how in zip(layers, compress):
        blob, mt = _compress(data, how)
        descs.append({"mediaType": mt, "digest": _blob(layout, blob), "size": len(blob)})
    cfg = {
        "architecture": arch,
        "os": "linux",
        "config": config or {},
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids or ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers],
        },
    }
    cdigest, csize = _json_blob(layout, cfg)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cdigest,
            "size": csize,
        },
        "layers": descs,
    }
    mdigest, msize = _json_blob(layout, manifest)
    return {"mediaType": manifest["mediaType"], "digest": mdigest, "size": msize}


def write_index(layout: Path, manifests: list[dict[str, Any]]) -> Path:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return layout


def named(desc: dict[str, Any], ref: str) -> dict[str, Any]:
    return {**desc, "annotations": {"org.opencontainers.image.ref.name": ref}}


def make_layout(
    layout: Path,
    layers: list[list[Entry]],
    compress: Optional[list[Optional[str]]] = None,
    config: Optional[dict[str, Any]] = None,
    ref: str = "t",
) -> Path:
    tars = [layer_tar(e) for e in layers]
    desc = image_manifest(layout, tars, compress or ["gzip"] * len(tars), config)
    return write_index(layout, [named(desc, ref)])


def busybox_layer(rootfs: Path) -> list[Entry]:
    """The busybox rootfs as hand-made layer entries."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = str(full.relative_to(rootfs))
            st = full.lstat()
            if full.is_symlink():
                out.append(Entry(rel, kind=tarfile.SYMTYPE, link=os.readlink(full), mode=0o777))
            elif full.is_dir():
                out.append(
                    Entry(
                        rel,
                        kind=tarfile.DIRTYPE,
                        mode=st.st_mode & 0o7777,
                        uid=st.st_uid,
                        gid=st.st_gid,
                    )
                )
            else:
                out.append(Entry(rel, data=full.read_bytes(), mode=st.st_mode & 0o7777))
    return out


def store_listing(root: Path) -> set[str]:
    """Every path under a store root except its lock files: to show that a refused image left
    nothing behind."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            rel = str((Path(dirpath) / n).relative_to(root))
            if not rel.endswith(".lock") and rel != "lock":
                out.add(rel)
    return out


# --- a real registry ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_S = TypeVar("_S", bound="ServedHTTP")


class ServedHTTP:
    """An HTTP/1.1 server on 127.0.0.1, in a thread while entered, that gives every request
    to ``handle`` (the registry proxies of the pull and push tests)."""

    def __init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        self.thread.start()
        return self

    def __exit__(self, *a: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Registry:
    host: str
    proc: subprocess.Popen[bytes]
    creds: Optional[tuple[str, str]] = None

    def push(self, source: str, name: str) -> str:
        """Pushes ``source`` (a skopeo transport:reference) as ``name``; returns the ref."""
        ref = f"{self.host}/{name}"
        args = ["skopeo", "copy", "--dest-tls-verify=false"]
        if self.creds:
            args += ["--dest-creds", ":".join(self.creds)]
        run(*args, source, f"docker://{ref}")
        return ref


@contextlib.contextmanager
def registry(work: Path, creds: Optional[tuple[str, str]] = None) -> Iterator[Registry]:
    """Debian's docker-registry on a free 127.0.0.1 port, storing in ``work``; with ``creds``,
    behind htpasswd basic auth."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = [
        "version: 0.1",
        "log: {level: error}",
        f"storage: {{filesystem: {{rootdirectory: {work / 'data'}}}}}",
        f"http: {{addr: '127.0.0.1:{port}'}}",
    ]
    if creds:
        hp = work / "htpasswd"
        hp.write_text(run("htpasswd", "-Bbn", *creds))
        cfg.append(f"auth: {{htpasswd: {{realm: test, path: {hp}}}}}")
    (work / "config.yml").write_text("\n".join(cfg) + "\n")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(work / "config.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("docker-registry did not start")
            time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", proc, creds)
    finally:
        proc.terminate()
        proc.wait()
