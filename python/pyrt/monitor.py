"""The owner of a container started by `pyrt run -d`.

A container dies with the process that started it; `pyrt run -d` must outlive the command line,
so it starts this small process in a session of its own, which starts the container, reports its
id (or the error) to the waiting command line over a pipe, records the exit status when the
container ends, and removes everything when `pyrt rm` sends it SIGTERM (or at once, with --rm).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Optional

from pyrt.errors import PyrtError, SpawnError, TimeoutExpired


def main(report_fd: int, argv: list[str]) -> int:
    from pyrt.cli import build_parser, container_from

    stop = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = build_parser().parse_args(["run", *argv])
    args.detach = False
    try:
        c = container_from(args)
        c.start(detached=True)
    except (PyrtError, ValueError, OSError) as e:
        status = 127 if isinstance(e, SpawnError) and e.stage == "exec" and e.errno == 2 else 125
        os.write(report_fd, f"err {status} {e}\n".encode())
        return 1
    os.write(report_fd, f"ok {c.id}\n".encode())
    os.close(report_fd)
    try:
        code: Optional[int] = None
        while not stop:
            try:
                code = c.wait(timeout=0.5)
                break
            except TimeoutExpired:
                continue
        if code is not None:
            c.record_exit(code)
            # Exited: keep its logs and state for `pyrt logs` and `ps` until `pyrt rm`.
            while not stop and not args.rm:
                time.sleep(0.2)
    finally:
        c.remove()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
