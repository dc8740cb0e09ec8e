"""The conditions the wait_for_* helpers poll (in Container and pyrt.aio.Container alike).
Each is a plain check that answers now; the polling, its timeout and the "container exited"
error belong to the callers."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import Optional, Union

from pyrt import _core

Pattern = Union[str, bytes, "re.Pattern[bytes]"]


def compile_pattern(pattern: Pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, str):
        pattern = pattern.encode()
    return re.compile(pattern) if isinstance(pattern, bytes) else pattern


def check_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    return path


def file_exists(pid: int, path: str) -> bool:
    """Whether ``path`` exists in the root of process ``pid``, resolved inside that root."""
    try:
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(_core.open_in_root(root, path, os.O_PATH))
        return True
    except OSError:
        return False
    finally:
        os.close(root)


def port_accepts(pid: int, port: int) -> bool:
    """Whether 127.0.0.1:``port`` in the network namespace of ``pid`` accepts a connection
    (within 0.2 s; a gone process counts as no)."""
    try:
        return _core.tcp_probe(pid, port, 0.2)
    except FileNotFoundError:
        return False
    except PermissionError:
        # A rootless container's namespace cannot be entered from here (that takes privilege
        # over the caller's own user namespace); its socket table can still be read.
        return port_listening(pid, port)


def port_listening(pid: int, port: int) -> bool:
    """Whether a TCP socket in the network namespace of ``pid`` listens on ``port`` on any
    address (the socket tables /proc/<pid>/net/tcp and tcp6, state 0A)."""
    want = f"{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A" and fields[1].endswith(":" + want):
                        return True
        except OSError:
            continue
    return False


def http_status(connect: Callable[[], socket.socket], path: str, timeout: float) -> Optional[int]:
    """The status of a GET of ``path`` over a new connection, or None when none is made or
    no answer, headers and all, comes within ``timeout`` (a server that sends its headers a
    byte at a time is cut off then, as one that says nothing is)."""
    from pyrt import timedhttp  # for the HTTP waits only: `import pyrt` is faster without

    try:
        sock = connect()
    except OSError:
        return None
    sock.settimeout(timeout)
    conn = timedhttp.Connection("localhost", timeout=timeout)
    # The socket was connected elsewhere (inside a network namespace): the connection takes
    # it as it is, and never connects itself.
    conn.sock = sock
    conn.arm(timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close", "User-Agent": "pyrt"})
        status = conn.getresponse().status
        # (Cut mid-header, http.client takes the end of the stream for the headers' end.)
        return None if conn.expired else status
    except (OSError, timedhttp.HTTPException):
        return None
    finally:
        conn.close()
