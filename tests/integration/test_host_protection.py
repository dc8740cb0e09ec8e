"""The host's files stay out of the container's reach: the runtime binary, the parent's open
descriptors."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sys
from pathlib import Path

import pytest

import pyrt


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_cve_2019_5736_proc_self_exe_is_never_the_host_interpreter(
    rootfs: Path, tmp_path: Path
) -> None:
    # The attack: a command whose interpreter is /proc/self/exe runs whatever binary the runtime
    # was executing at that moment, which then reopens itself for writing. With pyrt that binary
    # is pyrt-child from a sealed memfd: it runs, finds no plan, and exits 127.
    root = tmp_path / "img"
    import shutil

    shutil.copytree(rootfs, root, symlinks=True)
    evil = root / "evil"
    evil.write_text("#!/proc/self/exe\n")
    evil.chmod(0o755)
    img = pyrt.Image.load(root)
    python = os.path.realpath(sys.executable)
    ext = pyrt._core.__file__
    before = (_sha(python), _sha(ext))
    r = pyrt.run(img, ["/evil"])
    assert r.returncode == 127
    assert (_sha(python), _sha(ext)) == before


def test_the_child_image_is_sealed_against_writes(image: pyrt.Image) -> None:
    pyrt.run(image, ["true"])
    memfds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:pyrt-child"):
                memfds.append(fd)
        except FileNotFoundError:  # the descriptor listdir itself used
            continue
    assert memfds, "pyrt-child's memfd"
    f_get_seals, f_seal_write, f_seal_shrink = 1034, 0x8, 0x2
    seals = fcntl.fcntl(int(memfds[0]), f_get_seals)
    assert seals & f_seal_write and seals & f_seal_shrink
    # Even root cannot write it, nor shrink it.
    with pytest.raises(PermissionError):
        fd = os.open(f"/proc/self/fd/{memfds[0]}", os.O_WRONLY)
        try:
            os.write(fd, b"\x7fELF-overwritten")
        finally:
            os.close(fd)
    with pytest.raises(OSError) as ei:
        os.truncate(f"/proc/self/fd/{memfds[0]}", 0)
    assert ei.value.errno == errno.EPERM


def test_parents_inheritable_descriptors_do_not_reach_the_container(
    image: pyrt.Image, tmp_path: Path
) -> None:
    fds = []
    try:
        for i in range(50):
            fd = os.open(tmp_path / f"f{i}", os.O_CREAT | os.O_RDWR, 0o600)
            os.set_inheritable(fd, True)
            fds.append(fd)
        r = pyrt.run(image, ["ls", "/proc/self/fd"], text=True)
        # 0, 1, 2 and the descriptor ls opened to read the directory.
        assert sorted(int(x) for x in r.stdout.split()) == [0, 1, 2, 3]
    finally:
        for fd in fds:
            os.close(fd)


def test_masking_does_not_depend_on_the_containers_dev(image: pyrt.Image) -> None:
    r = pyrt.run(
        image, ["sh", "-c", "cat /proc/timer_list | wc -c; rm /dev/null; echo x > /proc/keys"],
        text=True,
    )  # fmt: skip
    assert r.stdout.split()[0] == "0"


def test_an_image_with_a_symlinked_proc_is_refused(rootfs: Path, tmp_path: Path) -> None:
    import shutil

    for name in ("proc", "sys", "dev"):
        root = tmp_path / f"img-{name}"
        shutil.copytree(rootfs, root, symlinks=True)
        shutil.rmtree(root / name)
        os.symlink("/etc", root / name)
        with pytest.raises(pyrt.SpawnError, match=f"/{name} is a symlink"):
            pyrt.run(pyrt.Image.load(root), ["true"])


def test_cve_2017_5226_no_controlling_terminal(rootfs: Path) -> None:
    # `pyrt run -i` in a terminal hands the container that terminal as stdin. The container
    # must not have it as its controlling terminal: TIOCSTI could push keystrokes into the
    # user's shell. Field 7 of /proc/self/stat is the controlling terminal (0: none).
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:
        script = "cut -d' ' -f7 /proc/self/stat; test -t 0 && echo stdin-is-a-tty"
        os.execv(sys.executable, [sys.executable, "-m", "pyrt.cli", "run", "-i", str(rootfs),
                                  "sh", "-c", script])  # fmt: skip
    out = b""
    while True:
        r, _, _ = select.select([fd], [], [], 10)
        if not r:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    lines = out.decode().split()
    assert lines == ["0", "stdin-is-a-tty"], out
