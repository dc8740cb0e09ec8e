"""Reading a layer blob: its uncompressed stream (gzip, zstd or none), hashed as it goes, with
decompression on a worker thread; and a plain file digest."""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any, Optional

from ..errors import ImageError

_GZIP = b"\x1f\x8b"
_ZSTD = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20

#: Called with the number of bytes just read from a blob (progress bars).
Progress = Callable[[int], None]


class Inflater(io.RawIOBase):
    """The uncompressed stream of a blob (gzip, zstd or none, told by its magic bytes: media
    types lie often enough; the content cannot), hashed as it goes.

    Decompressing and hashing run on a worker thread: zlib, zstd and hashlib release the GIL,
    so on a machine with two cores they overlap with the unpacker's file system calls instead
    of adding to them (measured: a third off a Debian rootfs layer)."""

    def __init__(self, raw: IO[bytes], what: str, progress: Optional[Progress]) -> None:
        self.raw = raw
        self.what = what
        self.progress = progress
        self.sha = hashlib.sha256()
        self.q: queue.Queue[Any] = queue.Queue(maxsize=16)
        self.stop = threading.Event()
        self.buf = memoryview(b"")
        self.done = False
        self.worker = threading.Thread(target=self._run, name="pyrt-inflate", daemon=True)
        self.worker.start()

    def readable(self) -> bool:
        return True

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _decoder(self, head: bytes) -> Any:
        if head.startswith(_GZIP):
            return _Gunzip()
        if head.startswith(_ZSTD):
            try:
                import zstandard
            except ImportError as e:  # pragma: no cover - a dependency of the package
                raise ImageError(f"{self.what}: zstd-compressed; install zstandard") from e
            return _Unzstd(zstandard)
        return None

    def _run(self) -> None:
        try:
            chunk = self.raw.read(_CHUNK)
            dec = self._decoder(chunk[:4])
            while chunk:
                if self.progress is not None:
                    self.progress(len(chunk))
                out = dec.feed(chunk) if dec is not None else chunk
                if out:
                    self.sha.update(out)
                    if not self._put(out):
                        return
                chunk = self.raw.read(_CHUNK)
            if dec is not None:
                dec.finish()
            self._put(None)
        except BaseException as e:
            self._put(e)

    def readinto(self, b: Any) -> int:
        while not self.buf:
            if self.done:
                return 0
            item = self.q.get()
            if item is None:
                self.done = True
                return 0
            if isinstance(item, BaseException):
                self.done = True
                raise item
            self.buf = memoryview(item)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        self.stop.set()
        self.worker.join()
        super().close()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


class _Gunzip:
    """gzip, including several members one after the other (as pigz and some tools write)."""

    def __init__(self) -> None:
        self.d = zlib.decompressobj(31)

    def feed(self, data: bytes) -> bytes:
        out = [self.d.decompress(data)]
        while self.d.eof and self.d.unused_data:
            rest = self.d.unused_data
            self.d = zlib.decompressobj(31)
            out.append(self.d.decompress(rest))
        return b"".join(out)

    def finish(self) -> None:
        if not self.d.eof:
            raise EOFError("the gzip stream ends early")


class _Unzstd:
    """zstd, including several frames one after the other."""

    def __init__(self, zstandard: Any) -> None:
        self.z = zstandard.ZstdDecompressor()
        self.d = self.z.decompressobj()

    def feed(self, data: bytes) -> bytes:
        if self.d.eof:  # the last chunk ended exactly with a frame
            self.d = self.z.decompressobj()
        out = [self.d.decompress(data)]
        while self.d.eof and self.d.unused_data:
            rest = self.d.unused_data
            self.d = self.z.decompressobj()
            out.append(self.d.decompress(rest))
        return b"".join(out)

    def finish(self) -> None:
        if not getattr(self.d, "eof", True):
            raise EOFError("the zstd stream ends early")


def file_digest(f: IO[bytes], progress: Optional[Progress] = None) -> str:
    sha = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        sha.update(chunk)
        if progress is not None:
            progress(len(chunk))
    return "sha256:" + sha.hexdigest()
