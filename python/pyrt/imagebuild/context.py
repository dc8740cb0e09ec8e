"""The build context: the directory COPY and ADD read from, confined to it.

Every path is opened component by component from a descriptor of the context with
``O_NOFOLLOW``; a symlink on the way is resolved inside the context (an absolute target
starts at the context's top, ``..`` cannot climb above it), so nothing outside the context is
ever read, whatever its links say or however they change meanwhile. Device nodes, FIFOs and
sockets cannot be copied and are refused naming their path. Paths ``.dockerignore`` leaves out
are invisible.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Optional

from pyrt.imagebuild.ignore import Ignore
from pyrt.rootfs.archives import MAX_DEPTH, ExactSize

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # (a FIFO never blocks an open)
_DIR_FLAGS = _FLAGS | os.O_DIRECTORY
_MAX_LINKS = 40
_CHUNK = 1 << 20
_GLOB = re.compile(r"[*?\[]")


class ContextError(Exception):
    """A source the context cannot give; ``steps`` turns it into a BuildError with the line."""


@dataclass(frozen=True)
class Entry:
    """One thing to copy: ``rel`` is its path in the context, ``arc`` its name in the layer
    (relative to the destination directory)."""

    rel: str
    arc: str
    st: os.stat_result
    link: Optional[str] = None


class Context:
    def __init__(self, path: str, ignore: Ignore) -> None:
        self.path = path
        self.ignore = ignore
        self.fd = os.open(path, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    # --- finding sources ----------------------------------------------------------------

    def sources(self, pattern: str) -> list[str]:
        """The context paths a COPY source names (wildcards expanded), sorted; refused when it
        leaves the context or matches nothing."""
        clean = posixpath.normpath(pattern)
        if clean == ".." or clean.startswith("../"):
            raise ContextError(f"{pattern}: outside the build context")
        clean = clean.lstrip("/")
        if clean in ("", "."):
            return [""]
        if not _GLOB.search(clean):
            rel = self.resolve(clean)
            if rel is None or self.ignore.excluded(rel):
                raise ContextError(f"{pattern}: not found in the build context")
            return [rel]
        found = sorted(self._glob(clean.split("/")))
        if not found:
            raise ContextError(f"{pattern}: no file in the build context matches")
        return found

    def _glob(self, parts: list[str], base: str = "") -> Iterator[str]:
        head, rest = parts[0], parts[1:]
        try:
            names = sorted(self._listdir(base))
        except (OSError, ContextError):
            return
        rx = re.compile(_segment(head) + r"\Z", re.S) if _GLOB.search(head) else None
        for name in names:
            if (rx is None and name != head) or (rx is not None and not rx.match(name)):
                continue
            rel = f"{base}/{name}" if base else name
            if self.ignore.excluded(rel):
                continue
            if not rest:
                yield rel
                continue
            st = self._lstat(rel)
            if stat.S_ISDIR(st.st_mode):
                yield from self._glob(rest, rel)

    def resolve(self, rel: str) -> Optional[str]:
        """``rel`` with every symlink on its way resolved inside the context, or None if it
        does not exist. A link that leads out of the context is refused."""
        todo = [p for p in rel.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop(0)
            if part == "..":
                if not done:
                    raise ContextError(f"{rel}: a symlink leads outside the build context")
                done.pop()
                continue
            cand = "/".join([*done, part])
            try:
                st = self._lstat(cand)
            except FileNotFoundError:
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_LINKS:
                    raise ContextError(f"{rel}: too many levels of symbolic links")
                target = self._readlink(cand)
                if target.startswith("/"):
                    # Absolute targets mean the context's top: they are not followed to the host.
                    done = []
                parts = [p for p in target.split("/") if p not in ("", ".")]
                todo = parts + todo
                continue
            done.append(part)
        return "/".join(done)

    # --- reading ------------------------------------------------------------------------

    def _open_dir(self, rel: str) -> int:
        fd = os.dup(self.fd)
        try:
            for part in [p for p in rel.split("/") if p]:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _lstat(self, rel: str) -> os.stat_result:
        head, _, name = rel.rpartition("/")
        try:
            fd = self._open_dir(head)
        except NotADirectoryError:
            raise FileNotFoundError(rel) from None
        except OSError as e:
            if e.errno == 40:  # ELOOP: a symlink where a directory was expected
                raise FileNotFoundError(rel) from None
            raise
        try:
            return os.stat(name or ".", dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def is_dir(self, rel: str) -> bool:
        return rel == "" or stat.S_ISDIR(self._lstat(rel).st_mode)

    def _listdir(self, rel: str) -> list[str]:
        fd = self._open_dir(rel)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def open(self, rel: str) -> IO[bytes]:
        head, _, name = rel.rpartition("/")
        dfd = self._open_dir(head)
        try:
            return os.fdopen(os.open(name, _FLAGS, dir_fd=dfd), "rb")
        finally:
            os.close(dfd)

    def entries(self, rel: str, arc: str) -> Iterator[Entry]:
        """``rel`` and, for a directory, everything under it that is not left out, parents
        first; the directory ``rel`` itself is named ``arc`` (``""``: its contents only)."""
        if rel.count("/") >= MAX_DEPTH:  # (each level is a frame: Python stops near 1000)
            shown = rel if len(rel) <= 80 else f"{rel[:40]}...{rel[-30:]}"
            raise ContextError(f"{shown}: more than {MAX_DEPTH} directories deep, not copied")
        st = self._lstat(rel) if rel else os.stat(self.fd)
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFLNK:
            yield Entry(rel, arc, st, self._readlink(rel))
            return
        if kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise ContextError(
                f"{rel or '.'}: a {_kind_name(kind)} in the build context cannot be copied"
            )
        if arc:
            yield Entry(rel, arc, st)
        if kind == stat.S_IFDIR:
            for name in sorted(self._listdir(rel)):
                child = f"{rel}/{name}" if rel else name
                if self.ignore.excluded(child) and not self.ignore.may_hold_included(child):
                    continue
                sub = f"{arc}/{name}" if arc else name
                if self.ignore.excluded(child):
                    # Left out itself, but a "!" pattern may take back something under it.
                    if stat.S_ISDIR(self._lstat(child).st_mode):
                        yield from (e for e in self.entries(child, sub)
                                    if not self.ignore.excluded(e.rel))  # fmt: skip
                    continue
                yield from self.entries(child, sub)

    def _readlink(self, rel: str) -> str:
        head, _, name = rel.rpartition("/")
        dfd = self._open_dir(head)
        try:
            return os.readlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    # --- digests and archives --------------------------------------------------------------

    def digest(self, entries: list[Entry]) -> str:
        """What the cache key needs of the entries: names, types, modes and contents (not
        times, so a fresh checkout of the same files hits the cache)."""
        h = hashlib.sha256()
        for e in entries:
            h.update(f"{e.arc}\0{e.st.st_mode:o}\0{e.link or ''}\0".encode())
            if stat.S_ISREG(e.st.st_mode):
                with self.open(e.rel) as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
            h.update(b"\0")
        return "sha256:" + h.hexdigest()

    def add_to(
        self,
        tf: tarfile.TarFile,
        e: Entry,
        owner: tuple[int, int],
        mode: Optional[int],
    ) -> None:
        ti = tarfile.TarInfo(e.arc)
        ti.mtime = int(e.st.st_mtime)
        ti.uid, ti.gid = owner
        ti.mode = stat.S_IMODE(e.st.st_mode) if mode is None else mode
        if e.link is not None:
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, e.link, 0o777
            tf.addfile(ti)
        elif stat.S_ISDIR(e.st.st_mode):
            ti.type = tarfile.DIRTYPE
            tf.addfile(ti)
        else:
            with self.open(e.rel) as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ContextError(f"{e.rel}: changed into something else while copied")
                ti.size = st.st_size
                tf.addfile(ti, ExactSize(f, st.st_size))


def _segment(pattern: str) -> str:
    from pyrt.imagebuild.ignore import translate

    return translate(pattern)


def _kind_name(kind: int) -> str:
    return {
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
        stat.S_IFSOCK: "socket",
    }.get(kind, "special file")
