"""HTTP connections with a deadline for the whole exchange.

A socket timeout bounds each wait for one packet, not an exchange: a registry that sends one
byte every few seconds (headers or body) never trips it, and a pull or push would wait for
ever. Each connection here is given a time for everything it carries; when that has passed, a
timer shuts its socket down, so the waiting read or write returns at once, and the caller,
seeing ``expired``, reports the registry as too slow instead of retrying.

The times are generous: ``TIMEOUT`` plus what the bytes expected take at ``MIN_RATE``.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from typing import Optional

HTTPException = http.client.HTTPException

#: Seconds allowed for one silence (connect, a packet) and the fixed part of an exchange.
TIMEOUT = 30.0
#: The slowest transfer accepted, bytes per second, averaged over a whole exchange.
MIN_RATE = 64 << 10


def allowance(nbytes: int) -> float:
    """Seconds an exchange carrying ``nbytes`` is given."""
    return TIMEOUT + max(nbytes, 0) / MIN_RATE


class _Timed:
    """Mixed into http.client's connections: ``arm(seconds)`` starts the clock."""

    sock: Optional[socket.socket]
    expired = False
    allowed = 0.0
    _timer: Optional[threading.Timer] = None

    def arm(self, seconds: float) -> None:
        """Cut the connection ``seconds`` from now (again: the clock restarts)."""
        if self._timer is not None:
            self._timer.cancel()
        self.allowed = seconds
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        self._shut()

    def _shut(self) -> None:
        sock = self.sock
        if sock is not None:
            # shutdown, not close: the reading thread still holds the descriptor, and a
            # closed one could be reused by another open before it notices. The plain
            # socket's, also under TLS: ssl's own shutdown would drop the TLS state from
            # under the thread reading through it; this way that thread sees the end of the
            # stream in its own time.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.expired:  # the clock ran out while connecting
            self._shut()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().close()  # type: ignore[misc]


class Connection(_Timed, http.client.HTTPConnection):
    pass


class SecureConnection(Connection, http.client.HTTPSConnection):
    pass
