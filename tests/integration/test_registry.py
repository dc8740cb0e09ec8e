"""Pulls from a real registry (Debian's docker-registry on 127.0.0.1, images pushed by skopeo),
with basic auth, with bearer tokens, through a connection that drops mid-blob, and with a blob
the registry has lost."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
from imagetools import (
    HAVE_REGISTRY,
    HAVE_SKOPEO,
    Entry,
    Registry,
    ServedHTTP,
    busybox_layer,
    make_layout,
    registry,
    run,
    store_listing,
)

import pyrt

pytestmark = pytest.mark.skipif(
    not (HAVE_REGISTRY and HAVE_SKOPEO),
    reason="needs docker-registry and skopeo (Debian packages docker-registry, skopeo)",
)


@pytest.fixture(scope="module")
def layout(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    big = os.urandom(3 << 20)  # a layer big enough to be cut in the middle
    layers = [busybox_layer(rootfs), [Entry("big", big), Entry("etc/marker", b"pulled\n")]]
    return make_layout(
        tmp_path_factory.mktemp("img") / "lay",
        layers,
        config={"Cmd": ["cat", "/etc/marker"], "User": "app"},
    )


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    with registry(tmp_path_factory.mktemp("registry")) as r:
        r.push(f"oci:{layout}:t", "bb:1")
        yield r


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("PYRT_ROOT", str(root))
    return root


def test_pull_run_and_cached_pull(reg: Registry, store: Path) -> None:
    ref = f"{reg.host}/bb:1"
    img = pyrt.Image.pull(ref, insecure=True)
    assert img.tags == [ref] and len(img.lower) == 2
    r = pyrt.run(img, text=True)
    assert r.stdout == "pulled\n"
    assert pyrt.run(img, ["id", "-un"], text=True).stdout == "app\n"
    assert pyrt.Image.get(ref).id == img.id
    # Pulled again: the layers are found by their chain ids, nothing is downloaded.
    with Proxy(reg.host) as p:
        again = pyrt.Image.pull(f"{p.host}/bb:1", insecure=True)
    assert again.lower == img.lower
    # Only the manifest and the config were fetched.
    assert [x.split("/")[-1] for x in p.paths if "/blobs/" in x] == [img.id]
    assert os.listdir(store / "tmp") == []


def test_pull_by_digest(reg: Registry, store: Path) -> None:
    out = run("skopeo", "inspect", "--tls-verify=false", f"docker://{reg.host}/bb:1")
    digest = json.loads(out)["Digest"]
    img = pyrt.Image.pull(f"{reg.host}/bb@{digest}", insecure=True)
    assert pyrt.run(img).stdout == b"pulled\n"


def test_errors_name_the_cause(reg: Registry, store: Path) -> None:
    with pytest.raises(pyrt.ImageNotFound, match="not found"):
        pyrt.Image.pull(f"{reg.host}/nope:1", insecure=True)
    with pytest.raises(pyrt.ImageError, match=r"bad tag|invalid image reference"):
        pyrt.Image.pull(f"{reg.host}/bb:../x", insecure=True)
    with pytest.raises(pyrt.ImageError, match="cannot reach"):
        pyrt.Image.pull("127.0.0.1:1/bb:1", insecure=True)
    assert not [p for p in store_listing(store) if p.startswith(("layers/", "tmp/"))]


def test_a_registry_that_never_answers_fails_once(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that takes the connection and says nothing is asked once, not once per retry
    (30 s x 5 before); the error says what went unanswered. (The timeout shortened here.)"""
    import socket

    from pyrt import timedhttp

    monkeypatch.setattr(timedhttp, "TIMEOUT", 0.3)
    taken: list[socket.socket] = []
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.settimeout(0.1)

        def accept() -> None:
            while not done.is_set():
                try:
                    taken.append(srv.accept()[0])
                except OSError:
                    continue

        done = threading.Event()
        t = threading.Thread(target=accept)
        t.start()
        try:
            with pytest.raises(pyrt.ImageError, match=r"no answer to GET /v2/x/manifests/1"):
                pyrt.Image.pull(f"127.0.0.1:{srv.getsockname()[1]}/x:1", insecure=True)
        finally:
            done.set()
            t.join()
            for c in taken:
                c.close()
    assert len(taken) == 1
    assert not [p for p in store_listing(store) if p.startswith(("layers/", "tmp/"))]


def test_loopback_registries_need_no_insecure(reg: Registry, store: Path) -> None:
    """Plain HTTP to 127.0.0.0/8 and localhost without insecure=True; any other registry
    is spoken to over TLS unless insecure=True says otherwise (no traffic is sent to those)."""
    port = reg.host.rsplit(":", 1)[1]
    img = pyrt.Image.pull(f"{reg.host}/bb:1")
    assert pyrt.run(img, ["cat", "/etc/marker"]).stdout == b"pulled\n"
    assert pyrt.Image.pull(f"localhost:{port}/bb:1").id == img.id
    from pyrt.image import registry

    def scheme(ref: str, insecure: bool) -> str:
        c = registry.Client(registry.parse_reference(ref), insecure, None, None)
        return c.url("/v2/").split(":", 1)[0]

    for near in ("127.0.0.1:5000/a", "127.3.4.5/a", "localhost:5000/a"):
        assert scheme(near, False) == "http", near
    for far in ("10.1.2.3:5000/a", "registry.example:5000/a", "quay.io/a"):
        assert scheme(far, False) == "https", far
        assert scheme(far, True) == "http", far


def test_basic_auth(tmp_path: Path, layout: Path, store: Path) -> None:
    with registry(tmp_path / "reg", creds=("alice", "s3cret")) as r:
        r.push(f"oci:{layout}:t", "private/bb:1")
        ref = f"{r.host}/private/bb:1"
        with pytest.raises(pyrt.ImageError, match="requires a user name and password"):
            pyrt.Image.pull(ref, insecure=True)
        with pytest.raises(pyrt.ImageError, match="access denied"):
            pyrt.Image.pull(ref, insecure=True, username="alice", password="wrong")
        img = pyrt.Image.pull(ref, insecure=True, username="alice", password="s3cret")
        assert pyrt.run(img).stdout == b"pulled\n"


def test_dropped_connection_mid_blob_is_resumed(reg: Registry, store: Path) -> None:
    with Proxy(reg.host, drop_after=1 << 20) as p:
        img = pyrt.Image.pull(f"{p.host}/bb:1", insecure=True)
    assert pyrt.run(img).stdout == b"pulled\n"
    assert p.dropped == 1
    assert any(rng.startswith("bytes=") and rng != "bytes=0-" for rng in p.ranges), p.ranges


def test_bearer_token_auth_and_no_credentials_to_other_hosts(reg: Registry, store: Path) -> None:
    with Proxy(reg.host, token=True, redirect_blobs=True) as p:
        with pytest.raises(pyrt.ImageError, match="authentication failed"):
            pyrt.Image.pull(f"{p.host}/bb:1", insecure=True, username="alice", password="no")
        img = pyrt.Image.pull(f"{p.host}/bb:1", insecure=True, username="alice", password="s3cret")
    assert pyrt.run(img).stdout == b"pulled\n"
    assert p.redirected > 0
    assert p.auth_on_redirect == [], "credentials were sent to the host a redirect named"


def test_manifest_naming_a_missing_blob(tmp_path: Path, layout: Path, store: Path) -> None:
    with registry(tmp_path / "reg") as r:
        r.push(f"oci:{layout}:t", "bb:1")
        manifest = json.loads(
            (
                layout
                / "blobs"
                / "sha256"
                / json.loads((layout / "index.json").read_text())["manifests"][0]["digest"][7:]
            ).read_text()
        )
        lost = manifest["layers"][1]["digest"][7:]
        data = tmp_path / "reg" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        (data / lost[:2] / lost / "data").unlink()
        with pytest.raises(pyrt.ImageError, match="blob the registry does not have"):
            pyrt.Image.pull(f"{r.host}/bb:1", insecure=True)
    assert not [p for p in store_listing(store) if p.startswith("tmp/")]


def test_cli_pull_run_images_rmi(reg: Registry, store: Path) -> None:
    ref = f"{reg.host}/bb:1"
    env = {**os.environ, "PYRT_ROOT": str(store)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pyrt.cli", *args], capture_output=True, text=True, env=env
        )

    r = cli("pull", "--insecure", ref)
    assert r.returncode == 0 and r.stdout.startswith("sha256:"), r.stderr
    assert cli("run", "--rm", ref).stdout == "pulled\n"
    assert ref in cli("images").stdout
    # A registry on a loopback address is spoken to over plain HTTP unasked (Docker's rule).
    r = cli("pull", ref)
    assert r.returncode == 0 and r.stdout.startswith("sha256:"), r.stderr
    assert cli("rmi", ref).returncode == 0
    assert ref not in cli("images").stdout


# --- a registry proxy that misbehaves on purpose ----------------------------------------------


class Proxy(ServedHTTP):
    """Forwards GETs to ``upstream``; can cut the first big blob mid-way, demand bearer tokens
    from its own token service, and redirect blobs to another host name (``localhost``) where
    it notes any Authorization header that arrives."""

    def __init__(
        self,
        upstream: str,
        drop_after: Optional[int] = None,
        token: bool = False,
        redirect_blobs: bool = False,
        stall_after: Optional[int] = None,
        drip_after: Optional[int] = None,
        sizeless: bool = False,
    ) -> None:
        self.upstream = upstream
        self.stall_after = stall_after
        self.drip_after = drip_after
        #: Manifests lose their layers' sizes, and big blobs come in 128 KiB every 0.2 s.
        self.sizeless = sizeless
        self.dripped = 0
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.drop_after = drop_after
        self.token = token
        self.redirect_blobs = redirect_blobs
        self.paths: list[str] = []
        self.ranges: list[str] = []
        self.dropped = 0
        self.redirected = 0
        self.auth_on_redirect: list[str] = []
        super().__init__()

    def __exit__(self, *a: object) -> None:
        self.release.set()
        super().__exit__(*a)

    def _reply(
        self,
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes = b"",
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        path = h.path
        self.paths.append(path)
        if path.startswith("/token"):
            import base64

            good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
            if h.headers.get("Authorization") != good:
                return self._reply(h, 401)
            return self._reply(h, 200, json.dumps({"token": "tok-123"}).encode())
        if path.startswith("/direct/"):
            if auth := h.headers.get("Authorization"):
                self.auth_on_redirect.append(auth)
            return self._forward(h, path[len("/direct") :])
        if self.token and h.headers.get("Authorization") != "Bearer tok-123":
            realm = f"http://{self.host}/token"
            return self._reply(
                h,
                401,
                b"{}",
                {
                    "WWW-Authenticate": f'Bearer realm="{realm}",service="test",'
                    'scope="repository:bb:pull"'
                },
            )
        if self.redirect_blobs and "/blobs/" in path:
            self.redirected += 1
            return self._reply(
                h, 307, b"", {"Location": f"http://localhost:{self.port}/direct{path}"}
            )
        self._forward(h, path)

    def _forward(self, h: http.server.BaseHTTPRequestHandler, path: str) -> None:
        headers = {k: v for k, v in h.headers.items() if k.lower() in ("accept", "range")}
        if "Range" in headers:
            self.ranges.append(headers["Range"])
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        if self.sizeless and "/manifests/" in path:
            doc = json.loads(body)
            for layer in doc.get("layers", []):
                layer.pop("size", None)
            body = json.dumps(doc).encode()
        conn.close()
        h.send_response(resp.status)
        for k in ("Content-Type", "Docker-Content-Digest", "Content-Range", "Accept-Ranges"):
            if v := resp.getheader(k):
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.stall_after is not None and len(body) > self.stall_after:
            h.wfile.write(body[: self.stall_after])
            h.wfile.flush()
            self.stalled.set()
            self.release.wait(30)
            h.close_connection = True
            return
        if self.sizeless and len(body) > 1 << 20:
            try:
                for i in range(0, len(body), 128 << 10):
                    h.wfile.write(body[i : i + (128 << 10)])
                    h.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if self.drip_after is not None and len(body) > self.drip_after:
            # The rest a byte at a time, each well within the socket timeout, until cut.
            h.wfile.write(body[: self.drip_after])
            h.close_connection = True
            try:
                for b in body[self.drip_after :]:
                    h.wfile.write(bytes([b]))
                    h.wfile.flush()
                    self.dripped += 1
                    if self.release.wait(0.05):
                        return
            except OSError:
                return
        if self.drop_after is not None and not self.dropped and len(body) > self.drop_after:
            self.dropped += 1
            h.wfile.write(body[: self.drop_after])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)


def test_a_blob_dripped_a_byte_at_a_time_is_cut_off(
    reg: Registry, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that never goes silent long enough for the socket timeout, but sends a byte
    every 50 ms, is cut off when the blob's time is up (before, a pull waited for ever); the
    error says so, nothing is retried, and nothing is left in the store. (Times shortened.)"""
    from pyrt import timedhttp

    monkeypatch.setattr(timedhttp, "TIMEOUT", 1.0)
    monkeypatch.setattr(timedhttp, "MIN_RATE", 1 << 30)
    with Proxy(reg.host, drip_after=1 << 16) as p:
        with pytest.raises(pyrt.ImageError, match=r"blobs/sha256:.*sending too slowly"):
            pyrt.Image.pull(f"{p.host}/bb:1", insecure=True)
        assert 0 < p.dripped < 200, p.dripped
        blobs = [x for x in p.paths if "/blobs/" in x]
        assert len(blobs) == len(set(blobs)), p.paths  # none asked twice
    assert not [x for x in store_listing(store) if x.startswith(("layers/", "tmp/"))]


def test_a_blob_of_unknown_size_gets_time_as_it_arrives(
    reg: Registry, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest may leave a layer's size out: such a blob is given its time a window at a
    time, renewed as each arrives, so a steady download longer than one window's time
    completes (and a drip would still be cut). Times and windows shortened here: 2 s for
    each 256 KiB, a download of ~4 s."""
    from pyrt import timedhttp
    from pyrt.image import registry as client

    monkeypatch.setattr(timedhttp, "TIMEOUT", 1.0)
    monkeypatch.setattr(timedhttp, "MIN_RATE", 256 << 10)
    monkeypatch.setattr(client, "WINDOW", 256 << 10)
    with Proxy(reg.host, sizeless=True) as p:
        img = pyrt.Image.pull(f"{p.host}/bb:1", insecure=True)
    assert pyrt.run(img).stdout == b"pulled\n"


class RawServer:
    """A TCP server on 127.0.0.1 whose every connection is given to ``serve(sock, stop)``."""

    def __init__(self, serve: Any) -> None:
        import socket

        self.serve = serve
        self.stop = threading.Event()
        self.taken = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.srv.settimeout(0.1)
        self.host = f"127.0.0.1:{self.srv.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept)]

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.srv.accept()[0]
            except OSError:
                continue
            self.taken += 1
            t = threading.Thread(target=self._one, args=(conn,))
            self.threads.append(t)
            t.start()

    def _one(self, conn: Any) -> None:
        with conn:
            try:
                conn.recv(65536)  # the request
                self.serve(conn, self.stop)
            except OSError:
                pass

    def __enter__(self) -> RawServer:
        self.threads[0].start()
        return self

    def __exit__(self, *a: object) -> None:
        self.stop.set()
        for t in list(self.threads):
            t.join()
        self.srv.close()


def test_headers_dripped_a_byte_at_a_time_are_cut_off(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer whose header lines come a byte every 50 ms (http.client allows 100 lines of
    64 KiB) ends in an ImageError when the exchange's time is up, asked once."""
    from pyrt import timedhttp

    monkeypatch.setattr(timedhttp, "TIMEOUT", 1.0)
    monkeypatch.setattr(timedhttp, "MIN_RATE", 1 << 30)

    def drip(conn: Any, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(0.05):
            conn.sendall(b"a")

    with RawServer(drip) as srv:
        with pytest.raises(pyrt.ImageError, match=r"GET /v2/x/manifests/1 .*sending too slowly"):
            pyrt.Image.pull(f"{srv.host}/x:1", insecure=True)
    assert srv.taken == 1
    assert not [x for x in store_listing(store) if x.startswith(("layers/", "tmp/"))]


def test_an_endless_challenge_body_is_not_read(store: Path) -> None:
    """A 401 whose body never ends: the challenge is in its headers, so the body is left
    unread (before, it was read to its end, in memory, for ever)."""

    def endless(conn: Any, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        while not stop.is_set():
            conn.sendall(chunk)

    with RawServer(endless) as srv:
        with pytest.raises(pyrt.ImageError, match="requires a user name and password"):
            pyrt.Image.pull(f"{srv.host}/x:1", insecure=True)
    assert not [x for x in store_listing(store) if x.startswith(("layers/", "tmp/"))]


PULLING = """
import sys, pyrt
pyrt.Image.pull(sys.argv[1], insecure=True)
"""


def test_owner_killed_during_a_pull_leaves_nothing_after_gc(reg: Registry, store: Path) -> None:
    with Proxy(reg.host, stall_after=1 << 20) as p:
        child = subprocess.Popen([sys.executable, "-c", PULLING, f"{p.host}/bb:1"])
        assert p.stalled.wait(30), "the pull never reached the big blob"
        child.kill()
        child.wait()
    assert os.listdir(store / "tmp"), "the killed pull should have left a partial blob"
    gc = subprocess.run([sys.executable, "-m", "pyrt", "gc"], capture_output=True, text=True)
    assert gc.returncode == 0, gc.stderr
    assert os.listdir(store / "tmp") == []
    img = pyrt.Image.pull(f"{reg.host}/bb:1", insecure=True)
    assert pyrt.run(img, text=True).stdout == "pulled\n"
