"""Files in and out of a container (``write_file``, ``read_file``, ``put_archive``,
``get_archive``, ``copy_in``, ``copy_out``): the argument checks and the operations of
``files``, run by ``Container._in_root`` on the container's root in whatever state it is."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Optional, Union

from pyrt.config import checks
from pyrt.errors import PyrtError
from pyrt.host import staging, userns
from pyrt.host.faults import fault
from pyrt.rootfs import archives, copies, files

PathArg = Union[str, "os.PathLike[str]"]


class ContainerFiles:
    """The file methods of ``pyrt.Container`` (a base class of it)."""

    if TYPE_CHECKING:
        _userns: Optional[userns.IdMaps]

        def _in_root(
            self, what: str, op: Callable[[int, files.Owner], bytes], write: bool
        ) -> bytes: ...

    def write_file(self, path: PathArg, data: Union[bytes, str], mode: int = 0o644) -> None:
        """Writes ``data`` to ``path`` inside the container (parents made), owned by its root.
        Works before start (the file is there when the command runs), while it runs, and
        after it exited, until ``remove()``."""
        p = checks.container_path(path, "path")
        if isinstance(data, str):
            data = data.encode()
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError(f"data must be bytes or str, not {type(data).__name__}")
        m = checks.whole(mode, "mode", 0, 0o7777)
        blob = data

        def op(root: int, owner: files.Owner) -> bytes:
            files.write_file(root, p, blob, m, owner)
            return b""

        self._in_root(p, op, write=True)

    def read_file(self, path: PathArg) -> bytes:
        """The contents of the file at ``path`` inside the container (symlinks followed inside
        its root); pyrt.PathNotFound (a PyrtError) naming the path when there is none."""
        p = checks.container_path(path, "path")
        return self._in_root(p, lambda root, _owner: files.read_file(root, p), write=False)

    def put_archive(self, path: PathArg, data: Union[bytes, IO[bytes]]) -> None:
        """Extracts a tar (bytes or a binary file object; gzip, bzip2 and xz too) into the
        directory ``path`` inside the container, as safely as an image layer: no entry can
        land outside ``path``. The archive's owners are kept (Docker's rule) where the container
        can hold them: as root, and rootless with a subordinate id range while not running."""
        p = checks.container_path(path, "path")
        if isinstance(data, (bytes, bytearray, memoryview)):
            stream: IO[bytes] = io.BytesIO(bytes(data))
        elif hasattr(data, "read"):
            stream = data
        else:
            raise TypeError(
                f"data must be bytes or a binary file object, not {type(data).__name__}"
            )
        keep = os.geteuid() == 0 and self._userns is None
        ranged = os.geteuid() != 0 and userns.has_range()

        def op(root: int, owner: files.Owner) -> bytes:
            # (0, 0) for a rootless caller: the helper is in the container's user namespace,
            # where a subordinate range can hold the archive's owners too.
            kept = keep or (ranged and owner == (0, 0))
            archives.extract(root, p, stream, owner, keep_owners=kept)
            return b""

        self._in_root(p, op, write=True)

    def get_archive(self, path: PathArg) -> bytes:
        """An uncompressed tar of ``path`` (a file or a tree) inside the container, its top entry
        named after the path's last component; refused past 4 GiB (``copy_out`` takes any
        size, to disk)."""
        p = checks.container_path(path, "path")

        return self._in_root(p, lambda root, _owner: archives.archive_bytes(root, p), write=False)

    def copy_in(self, src: PathArg, dst: PathArg) -> None:
        """Copies the host file or tree ``src`` to ``dst`` inside the container, as `docker cp
        SRC CTR:DST` does: into ``dst`` when that is a directory, else as ``dst``. What is
        written belongs to the container's root."""
        host = os.path.abspath(checks.host_path(src, "src"))
        target = checks.container_path(dst, "dst")
        if not os.path.lexists(host):
            raise PyrtError(f"copy_in: {host} does not exist on the host")

        def op(root: int, owner: files.Owner) -> bytes:
            copies.copy_in(root, host, target, owner)
            return b""

        self._in_root(target, op, write=True)

    def copy_out(self, src: PathArg, dst: PathArg) -> list[str]:
        """Copies ``src`` (a file or a tree) from inside the container to the host path ``dst``,
        as `docker cp CTR:SRC DST` does: into ``dst`` when that is a directory, else as
        ``dst``. Owners are kept where the caller may set them (root) and are the caller's
        otherwise; set-id bits are cleared. Device nodes and sockets are not copied: returns
        what was left out, and warns about it. Into an existing directory the copy merges: a
        regular file or a symlink in its way is replaced, a directory, device node, FIFO or
        socket is not (a PyrtError naming it)."""
        p = checks.container_path(src, "src")
        host = os.path.abspath(checks.host_path(dst, "dst"))
        into, name = copies.host_destination(host, p)  # checked before anything is read
        made = os.path.join(into, name)
        copies.refuse_special(made)  # (before anything is read)

        def copy(to: str) -> list[str]:
            def op(root: int, _owner: files.Owner) -> bytes:
                return json.dumps(copies.copy_out(root, p, to)).encode()

            out: list[str] = json.loads(self._in_root(p, op, write=False))
            return out

        if name in ("", ".") or os.path.lexists(made):
            left_out = copy(host)  # into what is there, merged as docker cp does
        else:
            # A new destination is built beside it and appears whole, or not at all.
            with staging.staged(into) as d:
                left_out = copy(os.path.join(d, name))
                fault("copied")
                if os.path.lexists(os.path.join(d, name)):
                    try:
                        os.rename(os.path.join(d, name), made)
                    except OSError as e:  # something came to be there meanwhile
                        raise PyrtError(f"copy_out: {made}: {e.strerror}") from None
        if left_out:
            warnings.warn(f"copy_out of {p} left out: {', '.join(left_out[:20])}", stacklevel=2)
        return left_out
