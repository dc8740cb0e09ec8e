"""A container's root filesystem as a directory descriptor, whatever the container's state.

A running container's root is ``/proc/PID/root``: its own mount namespace, with its tmpfs and
bind mounts, seen as its processes see it. A container that is made but not started, or has
exited, has no mount at all (the overlay lives and dies in its mount namespace), so its root is
mounted for the length of one operation in a forked helper with a private mount namespace of its
own (a user namespace too when rootless): nothing is ever mounted where the host could see it,
and a SIGKILL of the caller cannot leave a mount behind.

Operations are functions of a root descriptor returning bytes; the helper sends the bytes back
over a pipe, or the exception's class and message, which are raised again in the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from pyrt import errors
from pyrt.host import userns
from pyrt.host.libc import last_errno, libc

Operation = Callable[[int], bytes]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Overlay:
    """Where a stopped container's root comes from."""

    lower: tuple[str, ...]  # topmost first
    upper: str
    work: str
    target: str
    #: A user namespace (rootless): overlayfs reads its markers from user.* xattrs there.
    userxattr: bool


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = last_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


#: What a `volatile` overlay mount (a container's root, see the core's ``child/rootfs.rs``)
#: leaves in its work directory, outermost first; overlayfs refuses to mount the layer again
#: while it is there. The layer is intact: the machine has not gone down since.
VOLATILE_MARK = ("work/incompat", "work/incompat/volatile", "work/incompat/volatile/dirty")


def clear_volatile_mark(work: str) -> None:
    """Removes the mark from the work directory ``work``, opening up its mode-000 directories
    first for an owner without CAP_DAC_OVERRIDE (a rootless caller)."""
    if not os.path.lexists(os.path.join(work, VOLATILE_MARK[0])):
        return
    for d in ("work", *VOLATILE_MARK[:2]):
        with contextlib.suppress(OSError):
            os.chmod(os.path.join(work, d), 0o700)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(work, VOLATILE_MARK[2]))
    for d in reversed(VOLATILE_MARK[:2]):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(os.path.join(work, d))


def _mount_overlay(ov: Overlay) -> None:
    c = libc()
    _check(c.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Private first: the overlay must not propagate back to the host's namespace.
    _check(c.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    clear_volatile_mark(ov.work)
    opts = f"lowerdir={':'.join(ov.lower)},upperdir={ov.upper},workdir={ov.work}"
    if ov.userxattr:
        opts += ",userxattr"
    _check(
        c.mount(b"overlay", ov.target.encode(), b"overlay", 0, opts.encode()),
        f"mounting the container's root on {ov.target}",
    )


@contextlib.contextmanager
def running_root(pid: int) -> Iterator[int]:
    """The root of the running process ``pid``'s mount namespace."""
    try:
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise errors.PyrtError(f"cannot reach the container's root (pid {pid}): {e}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def call_running(pid: int, op: Operation) -> bytes:
    with running_root(pid) as fd:
        return op(fd)


def call_directory(path: str, op: Operation) -> bytes:
    """``op`` on a plain directory (a copied root, where there is no overlayfs)."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return op(fd)
    finally:
        os.close(fd)


def call_stopped(ov: Overlay, op: Operation, rootless: bool) -> bytes:
    """``op`` on the overlay ``ov``, mounted in a forked helper's private mount namespace."""

    def setup() -> int:
        _mount_overlay(ov)
        return os.open(ov.target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    return _forked(setup, op, rootless, f"mounts the container's root ({ov.target})")


def call_running_as_its_root(pid: int, op: Operation) -> bytes:
    """``op`` on a running container's root, from a forked helper that joined its user
    namespace as its root: a root caller's container mapped to a range has filesystems (its
    /tmp, /run) that refuse files of host ids it does not map, and ids only its root may set."""

    def setup() -> int:
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        ns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc().setns(ns, _CLONE_NEWUSER), "setns(the container's user namespace)")
        finally:
            os.close(ns)
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)
        return fd

    return _forked(setup, op, False, f"joins container process {pid}")


def _forked(setup: Callable[[], int], op: Operation, rootless: bool, what: str) -> bytes:
    """``op(setup())`` in a forked child (first in a user namespace mapped as a rootless
    container's, with ``rootless``); its bytes, or its exception, come back through a pipe."""
    res_r, res_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - reports through res_w
        code = 0
        try:
            os.close(res_r)
            os.close(go_w)
            os.close(ready_r)
            # Dies with its caller: a SIGKILL of the caller must not leave the helper (and its
            # mount namespace) running on.
            _check(libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL), "prctl(PR_SET_PDEATHSIG)")
            if os.getppid() != parent:
                os._exit(1)
            if rootless:
                _check(libc().unshare(_CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
                os.write(ready_w, b"1")
                if os.read(go_r, 1) != b"1":
                    os._exit(1)
            out = b"0" + op(setup())
        except BaseException as e:
            cls = type(e).__name__ if isinstance(e, errors.PyrtError) else None
            # (An OSError comes back as one, errno, words and path: the caller names the path
            # it asked for beside them.)
            oserr = [e.errno, e.strerror, e.filename] if isinstance(e, OSError) else None
            if isinstance(e, errors.PathNotFound):
                cls = "PathNotFound:" + str(e.filename)
            elif isinstance(e, (TypeError, ValueError)):
                cls = type(e).__name__
            elif isinstance(e, OSError) and cls is None and e.errno is not None:
                cls = "OSError"
            report = {"class": cls or "PyrtError", "message": str(e), "os": oserr}
            out = b"1" + json.dumps(report).encode()
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(res_w, view) :]
        except OSError:
            code = 1
        os._exit(code)
    os.close(res_w)
    os.close(go_r)
    os.close(ready_w)
    try:
        if rootless and os.read(ready_r, 1) == b"1":
            _write_maps(pid)
            os.write(go_w, b"1")
        chunks = []
        while chunk := os.read(res_r, 1 << 20):
            chunks.append(chunk)
    finally:
        for fd in (res_r, go_w, ready_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    if raw[:1] == b"0":
        return raw[1:]
    try:
        err = json.loads(raw[1:])
    except ValueError:
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")  # fmt: skip
        raise errors.PyrtError(f"the helper that {what} died ({how}) before it answered") from None
    raise _exception(err["class"], err["message"], err.get("os"))


def _exception(cls: str, message: str, oserr: Optional[list[Any]] = None) -> BaseException:
    if cls.startswith("PathNotFound:"):
        return errors.PathNotFound(cls.partition(":")[2])
    if cls == "OSError" and oserr is not None:
        return OSError(*oserr)  # (its subclass by errno: FileNotFoundError for ENOENT)
    builtin = {"TypeError": TypeError, "ValueError": ValueError}
    if cls in builtin:
        return builtin[cls](message)
    found: Optional[type] = getattr(errors, cls, None)
    if isinstance(found, type) and issubclass(found, errors.PyrtError):
        with contextlib.suppress(TypeError):  # one whose constructor takes more than a message
            return found(message)
    return errors.PyrtError(message)


def _write_maps(pid: int) -> None:
    """The helper's user namespace mapped as the container's is (the caller as 0)."""
    if userns.has_range():
        userns.write_maps(pid)
        return
    uid, gid = os.geteuid(), os.getegid()
    with open(f"/proc/{pid}/setgroups", "w") as f:
        f.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
