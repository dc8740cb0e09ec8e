"""Image.push through a proxy in front of a real docker-registry that asks for what some real
registries ask for: bearer tokens from a token service, uploads on another host name (where no
credentials may arrive), and a refusal of OCI manifests (Docker schema 2 is then sent)."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagetools import HAVE_REGISTRY, Registry, ServedHTTP, registry, run

import pyrt

pytestmark = pytest.mark.skipif(not HAVE_REGISTRY, reason="needs docker-registry and skopeo")

GOOD = "Basic " + base64.b64encode(b"alice:s3cret").decode()


class PushProxy(ServedHTTP):
    def __init__(self, upstream: str, refuse_oci: bool) -> None:
        self.upstream = upstream
        self.refuse_oci = refuse_oci
        self.auth_elsewhere: list[str] = []
        self.elsewhere = 0
        self.manifest_types: list[str] = []
        self.scopes: list[str] = []
        super().__init__()

    def reply(self, h: Any, status: int, body: bytes = b"", headers: Any = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def handle(self, h: Any) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        path = h.path
        if path.startswith("/token"):
            self.scopes.append(urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["scope"][0])
            if h.headers.get("Authorization") != GOOD:
                return self.reply(h, 401)
            return self.reply(h, 200, json.dumps({"token": "tok-9"}).encode())
        if path.startswith("/elsewhere/"):
            # Another host name for the uploads (as a registry's blob store would be).
            self.elsewhere += 1
            if auth := h.headers.get("Authorization"):
                self.auth_elsewhere.append(auth)
            return self.forward(h, path[len("/elsewhere") :], body)
        if h.headers.get("Authorization") != "Bearer tok-9":
            m = re.match(r"^/v2/(.+?)/(?:blobs|manifests)/", path)
            repo = m.group(1) if m else ""
            realm = f"http://{self.host}/token"
            challenge = (f'Bearer realm="{realm}",service="test",'
                         f'scope="repository:{repo}:pull,push"')  # fmt: skip
            return self.reply(h, 401, b"{}", {"WWW-Authenticate": challenge})
        if h.command == "PUT" and "/manifests/" in path:
            media = h.headers.get("Content-Type", "")
            self.manifest_types.append(media)
            if self.refuse_oci and "oci" in media:
                err = {"errors": [{"code": "MANIFEST_INVALID", "message": "OCI not accepted"}]}
                return self.reply(h, 400, json.dumps(err).encode())
        self.forward(h, path, body)

    def forward(self, h: Any, path: str, body: bytes) -> None:
        keep = ("accept", "content-type", "content-range", "range")
        headers = {k: v for k, v in h.headers.items() if k.lower() in keep}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.upstream, timeout=10)
        conn.request(h.command, path, body=body if h.command not in ("GET", "HEAD") else None,
                     headers=headers)  # fmt: skip
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        out = {}
        for k in ("Content-Type", "Docker-Content-Digest", "Range", "Docker-Upload-UUID"):
            if v := resp.getheader(k):
                out[k] = v
        if loc := resp.getheader("Location"):
            parts = urllib.parse.urlsplit(loc)
            rest = parts.path + (f"?{parts.query}" if parts.query else "")
            out["Location"] = (f"http://localhost:{self.port}/elsewhere{rest}"
                               if "/blobs/uploads/" in rest else rest)  # fmt: skip
        self.reply(h, resp.status, data, out)


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    with registry(tmp_path / "reg") as r:
        yield r


@pytest.fixture
def built(tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> pyrt.Image:
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f'FROM {rootfs}\nRUN echo pushed > /p\nCMD ["cat", "/p"]\n')
    return pyrt.build(ctx)


def test_bearer_tokens_uploads_elsewhere_and_docker_manifests(
    reg: Registry, built: pyrt.Image
) -> None:
    with PushProxy(reg.host, refuse_oci=True) as p:
        with pytest.raises(pyrt.ImageError, match="authentication failed"):
            built.push(f"{p.host}/team/app:1", username="alice", password="wrong")
        digest = built.push(f"{p.host}/team/app:1", username="alice", password="s3cret")
    assert p.elsewhere > 0, "the uploads did not go to the other host name"
    assert p.auth_elsewhere == [], "credentials were sent to the upload host"
    assert "repository:team/app:pull,push" in p.scopes
    oci, docker = (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    assert p.manifest_types[-2:] == [oci, docker]
    raw = json.loads(run("skopeo", "inspect", "--raw", "--tls-verify=false",
                         f"docker://{reg.host}/team/app:1"))  # fmt: skip
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {x["mediaType"] for x in raw["layers"]} == {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    }
    info = json.loads(run("skopeo", "inspect", "--tls-verify=false",
                          f"docker://{reg.host}/team/app:1"))  # fmt: skip
    assert info["Digest"] == digest
    back = pyrt.Image.pull(f"{reg.host}/team/app:1", insecure=True)
    assert pyrt.run(back).stdout == b"pushed\n"


def test_a_second_push_sends_no_blob_again(reg: Registry, built: pyrt.Image) -> None:
    with PushProxy(reg.host, refuse_oci=False) as p:
        built.push(f"{p.host}/a/b:1", username="alice", password="s3cret")
        first = p.elsewhere
        built.push(f"{p.host}/a/b:2", username="alice", password="s3cret")
    assert first > 0 and p.elsewhere == first, "blobs the registry has were uploaded again"


def test_cli_push(reg: Registry, built: pyrt.Image, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    built.tag("cli-app:1")
    env = {**os.environ, "PYRT_ROOT": str(tmp_path / "store")}
    with PushProxy(reg.host, refuse_oci=False) as p:
        r = subprocess.run([sys.executable, "-m", "pyrt", "push", "--creds", "alice:s3cret",
                            "cli-app:1", f"{p.host}/cli/app:1"],
                           capture_output=True, text=True, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().startswith("sha256:")
        bad = subprocess.run([sys.executable, "-m", "pyrt", "push", "--creds", "alice:x",
                              "cli-app:1", f"{p.host}/cli/app:1"],
                             capture_output=True, text=True, env=env)  # fmt: skip
        assert bad.returncode == 125 and "authentication failed" in bad.stderr


def test_from_a_registry_reference(
    reg: Registry, built: pyrt.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = f"{reg.host}/base/app:1"
    built.push(ref)  # a registry on this machine: plain HTTP without asking
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "other-store"))
    ctx = tmp_path / "ctx2"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f'FROM {ref}\nRUN cat /p > /q\nCMD ["cat", "/q"]\n')
    img = pyrt.build(ctx)
    assert pyrt.run(img).stdout == b"pushed\n"
    assert pyrt.Image.get(ref).id  # the base was pulled into the store
    # pull=True fetches it again even though it is stored.
    again = pyrt.build(ctx, pull=True)
    assert again.id == img.id
