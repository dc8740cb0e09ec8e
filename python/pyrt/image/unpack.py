"""Unpacking a tar stream (gzip, zstd or plain) into a directory, as a security boundary.

The work is the Rust core's (``rust/layer``): it decompresses, digests and unpacks in one
streaming pass through fixed buffers, so memory stays bounded whatever a layer holds. Every
entry's parent directory is opened with ``openat2(RESOLVE_IN_ROOT)``, so neither ``..``, nor an
absolute or relative symlink planted by an earlier entry, can point a write outside the root;
the entry itself is made relative to that descriptor by a single name, never following a
symlink. The caller unpacks into a fresh private directory and renames it into place only on
success, so a refused or broken image leaves nothing behind.

Layers carry deletions as whiteouts (the OCI image spec's ``.wh.NAME`` and ``.wh..wh..opq``).
Unpacked for overlayfs, each becomes what overlayfs itself reads in a lower directory: a 0:0
character device and the ``trusted.overlay.opaque`` xattr as host root, xattr whiteouts
otherwise. Applied, they delete from the tree built so far. Either way no whiteout file is left.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Optional

from pyrt import _core
from pyrt.config.sizes import parse_size

#: Limits against decompression bombs: the defaults, overridden by the environment variables
#: PYRT_MAX_LAYER_SIZE (a size: "8g") and PYRT_MAX_LAYER_ENTRIES, and per call.
MAX_ENTRIES = 2_000_000
MAX_BYTES = 64 << 30


def bytes_cap() -> int:
    """The largest content (the sum of file sizes) a layer may unpack to."""
    value = os.environ.get("PYRT_MAX_LAYER_SIZE")
    return MAX_BYTES if not value else parse_size(value, "PYRT_MAX_LAYER_SIZE")


def entries_cap() -> int:
    """The most entries a layer may hold."""
    value = os.environ.get("PYRT_MAX_LAYER_ENTRIES")
    if not value:
        return MAX_ENTRIES
    if not value.isdigit():
        raise ValueError(f"PYRT_MAX_LAYER_ENTRIES: not a whole number: {value!r}")
    return int(value)


#: The largest cap the core counts to: a larger one (PYRT_MAX_LAYER_SIZE=99999999t) means
#: no cap below it, as a huge timeout means no timeout.
_CAP_LIMIT = (1 << 63) - 1

_CHUNK = 1 << 20


def _cap(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name}={value}: a cap cannot be negative")
    return min(value, _CAP_LIMIT)


#: What to do with whiteout entries: keep them as plain files (a rootfs tarball, which is not a
#: layer), turn them into overlayfs' markers, or apply them to the tree being unpacked into.
WHITEOUTS_KEEP = "keep"
WHITEOUTS_OVERLAY = "overlay"
WHITEOUTS_APPLY = "apply"


@dataclass
class UnpackStats:
    entries: int = 0
    bytes: int = 0
    skipped_devices: list[str] = field(default_factory=list)
    whiteouts: int = 0
    #: "sha256:..." of the uncompressed tar stream (a layer's diff_id).
    diff_id: str = ""
    #: "sha256:..." of the bytes read (the blob, compressed or not).
    blob_digest: str = ""


def privileged() -> bool:
    """Root of the host (not of a user namespace): device nodes and trusted.* xattrs."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


@contextlib.contextmanager
def _descriptor(fileobj: IO[bytes]) -> Iterator[int]:
    """A descriptor that reads what is left of ``fileobj``: its own when it is unbuffered or a
    seekable file (set to its logical position); else a pipe fed from it by a thread."""
    # Only a file's own descriptor says what the object reads: a decompressing reader (bz2,
    # lzma) answers fileno() with the compressed file's.
    fd = -1
    direct = False
    if isinstance(fileobj, io.FileIO):
        fd, direct = fileobj.fileno(), True
    elif isinstance(fileobj, io.BufferedReader) and isinstance(fileobj.raw, io.FileIO):
        fd = fileobj.fileno()
        try:
            os.lseek(fd, fileobj.tell(), os.SEEK_SET)
            direct = True
        except OSError:
            pass  # a pipe behind a buffer: what the buffer holds is fed below
    if direct:
        yield fd
        return
    r, w = os.pipe2(os.O_CLOEXEC)
    failed: list[BaseException] = []

    def feed() -> None:
        try:
            with open(w, "wb", closefd=True) as out:
                while chunk := fileobj.read(_CHUNK):
                    out.write(chunk)
        except BrokenPipeError:
            pass  # the unpacker stopped early (an error it reports itself)
        except BaseException as e:
            failed.append(e)

    feeder = threading.Thread(target=feed, name="pyrt-unpack-feed", daemon=True)
    feeder.start()
    try:
        yield r
    finally:
        os.close(r)  # a feeder still writing gets EPIPE and ends
        feeder.join()
    if failed:
        raise failed[0]


def unpack(
    fileobj: IO[bytes],
    dest: str,
    *,
    what: str,
    max_entries: Optional[int] = None,
    max_bytes: Optional[int] = None,
    whiteouts: str = WHITEOUTS_KEEP,
    lowers: tuple[str, ...] = (),
    owner: Optional[tuple[int, int]] = None,
    devices: bool = True,
    to_host: bool = False,
    progress: Optional[Callable[[int], object]] = None,
) -> UnpackStats:
    """Unpacks the tar stream in ``fileobj`` (gzip, zstd or uncompressed, told by its first
    bytes) into the directory ``dest`` (empty, or with ``whiteouts="apply"`` the layers below
    this one). ``what`` names the image in errors. ``lowers`` (topmost first) are the layers
    this one goes on top of. The whole stream is read, and both its digests returned.

    For files copied into and out of containers: ``owner`` replaces every entry's owner,
    ``devices=False`` skips device nodes (named in the stats), ``to_host`` (a copy out to the
    host) clears set-uid and set-gid bits and refuses to replace a directory, a device node, a
    FIFO or a socket in an entry's way. Raises ``ImageError`` (``UnsafeImageError`` for an
    escape attempt)."""
    with _descriptor(fileobj) as fd:
        got = _core.unpack_layer(
            fd,
            dest,
            what,
            whiteouts,
            [str(lower) for lower in lowers],
            owner,
            devices,
            to_host,
            _cap(entries_cap() if max_entries is None else max_entries, "max_entries"),
            _cap(bytes_cap() if max_bytes is None else max_bytes, "max_bytes"),
            os.geteuid() == 0,
            privileged(),
            progress,
        )
    entries, nbytes, skipped, whiteout_count, diff_id, blob_digest = got
    return UnpackStats(entries, nbytes, list(skipped), whiteout_count, diff_id, blob_digest)
