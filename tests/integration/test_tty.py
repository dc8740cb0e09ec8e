"""A pseudo-terminal as the container's console: `pyrt run -it` in a terminal, and tty=True."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pyrt


def _read_until(fd: int, needle: bytes, timeout: float = 10) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while needle not in out and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_run_it_in_a_terminal(rootfs: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the "user's terminal" runs pyrt
        os.execv(
            sys.executable, [sys.executable, "-m", "pyrt.cli", "run", "-it", str(rootfs), "sh"]
        )
    done = False
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        _read_until(fd, b"# ")
        # The shell echoes what is typed: wait for what only its output contains.
        os.write(fd, b"tty; stty size; test -t 0 && echo is-a-tty; echo sum-$((40+2))\r")
        out = _read_until(fd, b"sum-42")
        assert b"/dev/pts/0" in out  # the container's own devpts instance
        assert b"is-a-tty\r\n" in out and b"40 120" in out
        os.write(fd, b"exit 5\r")
        _read_until(fd, b"\0", timeout=3)
        done = True
    finally:
        if not done:
            os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 5


def test_tty_container_console(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh"], tty=True) as c:
        assert c.console is not None
        os.write(c.console, b"echo typed-$((6*7)); tty; exit 3\r")
        assert c.wait(timeout=10) == 3
        logs = c.logs()
    assert b"typed-42" in logs and b"/dev/pts/0" in logs


def test_an_exec_into_a_tty_container_has_pipes_not_a_terminal(image: pyrt.Image) -> None:
    """As ``docker exec`` without ``-t``: the console is the first process's; an exec's stdio
    are the caller's (it failed, trying to hand a pty of its own over a pipe)."""
    with pyrt.Container(image, ["sleep", "60"], tty=True) as c:
        r = c.exec(["sh", "-c", "test -t 0 || test -t 1 || echo no-tty; exit 4"], text=True)
        assert (r.returncode, r.stdout) == (4, "no-tty\n")
        assert c.exec(["cat"], input=b"fed").stdout == b"fed"


def test_tty_logs_are_whole_once_it_exited(image: pyrt.Image) -> None:
    """logs() after the exit has all of the console's output, as for a container without a
    tty: it waits for the log thread to write the last of it."""
    for _ in range(5):
        with pyrt.Container(image, ["sh", "-c", "seq 1 20000; echo the-end; exit 4"],
                            tty=True) as c:  # fmt: skip
            assert c.wait(timeout=30) == 4
            logs = c.logs()
        assert logs.rstrip().endswith(b"the-end"), logs[-200:]


def test_tty_refused_for_run(image: pyrt.Image) -> None:
    import pytest

    with pytest.raises(pyrt.PyrtError, match="tty"):
        pyrt.run(image, ["true"], tty=True)
