"""The layer decompressor in the core: gzip members and zstd frames back to back, buffer
boundaries that fall between them, streams that end early, and a bomb that inflates in
bounded memory."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

import pyrt
from helpers import small_tmpfs
from pyrt.image.unpack import unpack


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def split_compress(kind: str, data: bytes, pieces: int = 3) -> bytes:
    step = len(data) // pieces + 1
    parts = [data[i : i + step] for i in range(0, len(data), step)]
    if kind == "gzip":
        return b"".join(gzip.compress(p) for p in parts)
    if kind == "zstd":
        z = zstandard.ZstdCompressor()
        return b"".join(z.compress(p) for p in parts)
    return data


@pytest.mark.parametrize("kind", ["gzip", "zstd", "plain"])
def test_several_members_or_frames(kind: str, tmp_path: Path) -> None:
    files = {"a": b"a" * (1 << 20), "b": bytes(range(256)) * 3000, "c": b"c" * (3 << 20)}
    plain = tar_of(files)
    blob = split_compress(kind, plain)
    stats = unpack(io.BytesIO(blob), str(tmp_path), what="t")
    for name, data in files.items():
        assert (tmp_path / name).read_bytes() == data
    assert stats.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    assert stats.blob_digest == "sha256:" + hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_stream_is_an_error(kind: str, tmp_path: Path) -> None:
    blob = split_compress(kind, tar_of({"f": bytes(range(256)) * 4000}), pieces=1)
    with pytest.raises(pyrt.ImageError, match="corrupt compressed layer after"):
        unpack(io.BytesIO(blob[: len(blob) // 2]), str(tmp_path), what="t")


def test_archive_without_end_blocks_and_with_trailing_garbage(tmp_path: Path) -> None:
    """GNU tar, umoci and podman take an archive that stops right after its last entry's
    content, without padding or end blocks (what umoci 0.4.7's `insert` writes), and ignore
    what follows the end blocks; the digest covers all of it."""
    plain = tar_of({"f": b"x" * 1000, "g": b"y"})
    # f: header + 2 blocks; g: header + 1 byte of content, then padding and end blocks.
    cut = 512 + 1024 + 512 + 1
    assert plain[cut:].strip(b"\0") == b""
    blobs = {"cut": plain[:cut], "blocks": plain[: cut + 511], "garbage": plain + b"junk" * 400}
    for name, blob in blobs.items():
        dest = tmp_path / name
        dest.mkdir()
        stats = unpack(io.BytesIO(blob), str(dest), what=name)
        assert (dest / "f").read_bytes() == b"x" * 1000 and (dest / "g").read_bytes() == b"y"
        assert stats.diff_id == "sha256:" + hashlib.sha256(blob).hexdigest()
    # Ending inside a file's content is still an error, naming the file.
    (tmp_path / "short").mkdir()
    with pytest.raises(pyrt.ImageError, match=r"ends inside 'f' \(300 of 1000 bytes\)"):
        unpack(io.BytesIO(plain[: 512 + 300]), str(tmp_path / "short"), what="short")


def test_malformed_archive_names_the_offset(tmp_path: Path) -> None:
    plain = tar_of({"f": b"x" * 1000, "g": b"y"})
    broken = plain[:1536] + b"\x01" * 512 + plain[2048:]  # the second header, garbled
    with pytest.raises(pyrt.ImageError, match=r"^what: not a readable tar archive at byte \d+"):
        unpack(io.BytesIO(broken), str(tmp_path), what="what")


def zero_layer_layout(layout: Path, size: int = 4 << 30) -> None:
    """An OCI layout of one gzip layer holding one file of ``size`` zero bytes (about 4 MiB
    compressed for 4 GiB), written as it streams."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    plain = hashlib.sha256()
    tmp = layout / "layer.tmp"
    with tmp.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as gz:
        info = tarfile.TarInfo("zeros")
        info.size = size
        block = bytes(1 << 20)
        for chunk in (
            [info.tobuf(format=tarfile.GNU_FORMAT)] + [block] * (size >> 20) + [bytes(1024)]
        ):
            gz.write(chunk)
            plain.update(chunk)

    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    with tmp.open("rb") as f:
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    layer = {"digest": "sha256:" + h.hexdigest(), "size": tmp.stat().st_size}
    tmp.rename(blobs / h.hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + plain.hexdigest()]},
    }
    cdesc = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    mdesc = blob(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **mdesc}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


LOAD = """
import pyrt
img = pyrt.Image.load(__import__("sys").argv[1])
print(__import__("os").path.getsize(img.lower[0] + "/zeros"))
# VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across execve.
print([l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1])
"""


def test_a_4_gib_layer_of_zeros_loads_in_bounded_memory(tmp_path: Path) -> None:
    """Image.load of a layer holding one 4 GiB file of zeros, measured in a child process (its
    peak resident set size): the Python inflater this replaced asked zlib for a whole chunk's
    output at once and reached 3.1 GiB. A configured cap below the layer's size stops it with
    "layer too large", leaving nothing in the store."""
    layout = tmp_path / "layout"
    zero_layer_layout(layout)
    env = {**os.environ, "PYRT_ROOT": str(tmp_path / "store")}
    try:
        r = subprocess.run([sys.executable, "-c", LOAD, str(layout)],
                           capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        size, hwm_kib = map(int, r.stdout.split())
        assert size == 4 << 30
        assert hwm_kib < 256 * 1024, f"peak memory {hwm_kib} KiB"
    finally:
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
    env["PYRT_MAX_LAYER_SIZE"] = "1g"
    r = subprocess.run([sys.executable, "-c", LOAD, str(layout)],
                       capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert r.returncode != 0
    assert "layer too large: more than 1073741824 bytes of content" in r.stderr
    assert not list((tmp_path / "store").glob("layers/*/root"))
    assert not list((tmp_path / "store").glob("tmp/*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    """ENOSPC while writing is an ImageError that says so and names the entry, not an OSError
    from deep inside."""
    with small_tmpfs(tmp_path / "small", "size=1m") as small:
        blob = gzip.compress(tar_of({"a": bytes(600_000), "b": bytes(600_000)}))
        with pytest.raises(pyrt.ImageError, match="no space left on device while unpacking 'b'"):
            unpack(io.BytesIO(blob), str(small), what="full")
