"""The timed HTTP connection (registry pulls and pushes, wait_for_http): an answer dripped a
byte at a time is cut off when its time is up, over plain HTTP and over TLS alike, and the
reader sees the end of the stream (an OSError or an HTTPException), never a ValueError."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from pyrt import timedhttp


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)  # fmt: skip
    return d / "cert.pem", d / "key.pem"


@contextlib.contextmanager
def dripping(tls: Optional[ssl.SSLContext]) -> Iterator[int]:
    """A server on 127.0.0.1 (its port) that answers a status line, then a header a byte
    every 50 ms, until the test ends."""
    stop = threading.Event()
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)

    def serve() -> None:
        raw, _ = srv.accept()
        try:
            conn = tls.wrap_socket(raw, server_side=True) if tls else raw
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not stop.wait(0.05):
                    conn.sendall(b"a")
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


@pytest.mark.parametrize("kind", ["plain", "tls"])
def test_a_dripped_answer_is_cut_off(kind: str, cert: tuple[Path, Path]) -> None:
    server_tls = None
    if kind == "tls":
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(*cert)
    with dripping(server_tls) as port:
        conn: timedhttp.Connection
        if kind == "tls":
            client_tls = ssl.create_default_context(cafile=str(cert[0]))
            conn = timedhttp.SecureConnection("localhost", port, timeout=5, context=client_tls)
        else:
            conn = timedhttp.Connection("127.0.0.1", port, timeout=5)
        conn.arm(0.5)
        t0 = time.monotonic()
        try:
            conn.request("GET", "/")
            conn.getresponse()
        except (OSError, http.client.HTTPException):
            pass  # the cut: the end of the stream, as the callers expect it
        finally:
            conn.close()
        assert conn.expired
        assert time.monotonic() - t0 < 4  # the 0.5 s, not the 5 s socket timeout per byte
