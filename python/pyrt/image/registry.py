"""Pulling from a registry over the OCI distribution API (what Docker Hub, ghcr.io, quay.io
and ``docker-registry`` serve).

Plain ``http.client`` rather than a client library: a pull needs a few GETs with exact control
over what a library would hide (the Authorization header must not follow a redirect to a blob
store on another host; a dropped blob download resumes with a Range request), and the package
stays free of heavy dependencies. Blobs are downloaded into the store's private temporary
directory, verified against their digest as they arrive, and only then unpacked.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import ipaddress
import os
import re
import socket
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, Union

from pyrt import timedhttp
from pyrt.errors import ImageError, ImageNotFound
from pyrt.image import oci, store
from pyrt.image.layers import hex_of

ACCEPT = ", ".join(oci.INDEX_TYPES + oci.MANIFEST_TYPES)
DOCKER_HUB = "registry-1.docker.io"
RETRIES = 5
#: The bytes a blob of unknown size is given time for at once (``timedhttp.allowance``).
WINDOW = 16 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] to connect to
    repository: str
    tag: Optional[str]
    digest: Optional[str]

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"


_NAME = re.compile(
    r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?)+(?::[0-9]{1,5})?$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_reference(ref: str) -> Reference:
    """``[registry/]repository[:tag][@digest]``; Docker Hub's short names are expanded
    (``busybox`` is ``registry-1.docker.io/library/busybox:latest``)."""
    name, _, digest = ref.partition("@")
    if digest:
        hex_of(digest, ref)
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.match(tag):
            raise ImageError(f"invalid image reference {ref!r}: bad tag {tag!r}")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repo = first, rest
    else:
        registry, repo = DOCKER_HUB, name
        if "/" not in repo:
            repo = "library/" + repo
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
    if not _HOST.match(registry):
        raise ImageError(f"invalid image reference {ref!r}: bad registry {registry!r}")
    if not _NAME.match(repo):
        raise ImageError(f"invalid image reference {ref!r}: bad repository name {repo!r}")
    return Reference(registry, repo, tag if tag or digest else "latest", digest or None)


def loopback(registry: str) -> bool:
    """Whether ``registry`` (host[:port]) is on this machine, where plain HTTP is allowed
    without asking (Docker's rule for localhost registries)."""
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transient(Exception):
    """A failure worth retrying (connection dropped, server busy)."""


class Client:
    """One registry, one repository: the GETs of a pull with authentication and redirects."""

    def __init__(
        self,
        ref: Reference,
        insecure: bool,
        username: Optional[str],
        password: Optional[str],
    ) -> None:
        self.ref = ref
        # Plain HTTP when asked, and to registries on this machine without asking (Docker's
        # rule; a loopback registry is rarely given a certificate).
        self.scheme = "http" if insecure or loopback(ref.registry) else "https"
        self.creds = (username, password) if username is not None else None
        self.auth: Optional[str] = None  # the Authorization header that worked
        #: What a token is asked for when the challenge names no scope ("pull", "pull,push").
        self.actions = "pull"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.ref.registry}{path}"

    def _connect(self, url: urllib.parse.SplitResult, seconds: float) -> timedhttp.Connection:
        """A connection to ``url``'s host that is cut when ``seconds`` have passed."""
        host = url.hostname or ""
        conn: timedhttp.Connection
        if url.scheme == "https":
            conn = timedhttp.SecureConnection(
                host, url.port, timeout=timedhttp.TIMEOUT, context=ssl.create_default_context()
            )
        else:
            conn = timedhttp.Connection(host, url.port, timeout=timedhttp.TIMEOUT)
        conn.arm(seconds)
        return conn

    def too_slow(self, conn: http.client.HTTPConnection, method: str, what: str) -> None:
        """Raises when ``conn``'s time ran out: the failure seen is the cut, not its cause."""
        if isinstance(conn, timedhttp.Connection) and conn.expired:
            raise ImageError(
                f"registry {self.ref.registry}: {method} {what} was not over within its "
                f"{conn.allowed:.0f} seconds (a registry sending too slowly)"
            )

    def get(
        self, path: str, headers: Optional[dict[str, str]] = None, expect: int = oci.MAX_JSON
    ) -> tuple[http.client.HTTPResponse, timedhttp.Connection]:
        """GET on the registry; authenticates on a 401 challenge and follows redirects. The
        caller reads the response and closes the connection."""
        return self.request("GET", path, headers, expect=expect)

    def request(
        self,
        method: str,
        path: str,
        headers: Optional[dict[str, str]] = None,
        body: Optional[Callable[[], Union[bytes, IO[bytes]]]] = None,
        expect: int = oci.MAX_JSON,
    ) -> tuple[http.client.HTTPResponse, timedhttp.Connection]:
        """``method`` on ``path`` (or a full URL the registry gave, as an upload's Location);
        ``body()`` gives the body afresh for each attempt. Authenticates on a 401 challenge;
        GET and HEAD follow redirects. The exchange, redirects and the answer's body of up to
        ``expect`` bytes included, is cut after ``timedhttp.allowance`` of what it carries."""
        url = path if "://" in path else self.url(path)
        authed = False
        sent = int(headers.get("Content-Length", 0)) if headers else 0
        until = time.monotonic() + timedhttp.allowance(sent + expect)
        for _ in range(10):
            parts = urllib.parse.urlsplit(url)
            h = dict(headers or {})
            # Credentials go to the registry only, never to the host a redirect points at.
            if self.auth and parts.netloc == self.ref.registry:
                h["Authorization"] = self.auth
            conn = self._connect(parts, until - time.monotonic())
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                conn.request(method, target, body=body() if body else None, headers=h)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self.too_slow(conn, method, target)
                if isinstance(e, ssl.SSLError):
                    raise ImageError(
                        f"{self.ref.registry}: TLS failed ({e}); a plain-HTTP registry needs "
                        "insecure=True (--insecure)"
                    ) from e
                if isinstance(e, ConnectionRefusedError):
                    raise ImageError(f"cannot reach registry {self.ref.registry}: {e}") from e
                if isinstance(e, (socket.timeout, TimeoutError)):
                    # Not retried: a registry that takes a connection and then says nothing
                    # for TIMEOUT seconds would otherwise cost RETRIES times that.
                    raise ImageError(
                        f"registry {self.ref.registry}: no answer to {method} {target} within "
                        f"{timedhttp.TIMEOUT:.0f} seconds"
                    ) from e
                raise Transient(f"{self.ref.registry}: {e}") from e
            self.too_slow(conn, method, target)  # (a cut mid-header reads as the headers' end)
            if resp.status == 401 and not authed and parts.netloc == self.ref.registry:
                challenge = resp.getheader("WWW-Authenticate", "")
                conn.close()  # unread: a body without end would be read for ever
                self.auth = self._authenticate(challenge)
                authed = True
                continue
            if resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                loc = resp.getheader("Location")
                conn.close()  # unread: a body without end would be read for ever
                if not loc:
                    raise ImageError(f"{url}: redirect without a Location")
                url = urllib.parse.urljoin(url, loc)
                continue
            if resp.status in (429, 500, 502, 503, 504):
                conn.close()  # unread: a body without end would be read for ever
                raise Transient(f"{url}: HTTP {resp.status}")
            return resp, conn
        raise ImageError(f"{url}: too many redirects")

    def _authenticate(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        basic = None
        if self.creds is not None:
            raw = f"{self.creds[0]}:{self.creds[1] or ''}".encode()
            basic = "Basic " + base64.b64encode(raw).decode()
        if scheme.lower() == "basic":
            if basic is None:
                raise ImageError(
                    f"{self.ref.registry} requires a user name and password (username=, password=)"
                )
            return basic
        if scheme.lower() != "bearer" or "realm" not in fields:
            raise ImageError(f"{self.ref.registry}: unsupported authentication {challenge!r}")
        query = {"service": fields.get("service", "")}
        query["scope"] = fields.get("scope") or f"repository:{self.ref.repository}:{self.actions}"
        realm = urllib.parse.urlsplit(fields["realm"])
        conn = self._connect(realm, timedhttp.allowance(oci.MAX_JSON))
        h = {"Authorization": basic} if basic else {}
        try:
            conn.request("GET", realm.path + "?" + urllib.parse.urlencode(query), headers=h)
            resp = conn.getresponse()
            body = resp.read(oci.MAX_JSON)
        except (OSError, http.client.HTTPException) as e:
            self.too_slow(conn, "GET", fields["realm"])
            raise ImageError(f"token service {fields['realm']}: {e}") from e
        finally:
            conn.close()
        self.too_slow(conn, "GET", fields["realm"])
        if resp.status in (401, 403):
            raise ImageError(
                f"{self.ref.registry}: authentication failed (token service said {resp.status})"
            )
        if resp.status != 200:
            raise ImageError(f"token service {fields['realm']}: HTTP {resp.status}")
        doc = oci.parse_json(body, "token response")
        token = doc.get("token") or doc.get("access_token")
        if not isinstance(token, str):
            raise ImageError("token service: no token in its answer")
        return "Bearer " + token

    def small(self, kind: str, reference: str, accept: Optional[str] = None) -> tuple[bytes, str]:
        """A manifest or config: (body, media type), with retries."""
        path = f"/v2/{self.ref.repository}/{kind}/{reference}"
        for attempt in range(RETRIES):
            try:
                resp, conn = self.get(path, {"Accept": accept} if accept else None)
                try:
                    body = resp.read(oci.MAX_JSON + 1)
                except (http.client.HTTPException, OSError):
                    self.too_slow(conn, "GET", path)
                    raise
                finally:
                    conn.close()
                self.too_slow(conn, "GET", path)
            except (Transient, http.client.HTTPException, OSError) as e:
                if attempt == RETRIES - 1:
                    raise ImageError(f"{self.ref.registry}: {e}") from e
                time.sleep(0.2 * 2**attempt)
                continue
            what = f"{self.ref.registry}/{self.ref.repository} {kind[:-1]} {reference}"
            if resp.status == 404:
                if kind == "manifests":
                    raise ImageNotFound(f"{what}: not found in the registry")
                raise ImageError(f"{what}: the manifest names a blob the registry does not have")
            if resp.status in (401, 403):
                raise ImageError(
                    f"{what}: access denied (HTTP {resp.status}); check the credentials"
                )
            if resp.status != 200:
                raise ImageError(f"{what}: HTTP {resp.status}")
            if len(body) > oci.MAX_JSON:
                raise ImageError(f"{what}: larger than {oci.MAX_JSON} bytes")
            return body, (resp.getheader("Content-Type") or "").split(";")[0].strip()
        raise AssertionError("unreachable")

    def blob_to_file(
        self, digest: str, dest: Path, size: Optional[int], progress: Callable[[int], None]
    ) -> None:
        """Downloads a blob into ``dest``, resuming with Range after a dropped connection, and
        verifies it against ``digest``; a mismatch deletes the file and raises."""
        path = f"/v2/{self.ref.repository}/blobs/{digest}"
        sha = hashlib.sha256()
        have = 0
        what = f"{self.ref.registry}/{self.ref.repository} blob {digest}"
        with open(dest, "wb") as out:
            for attempt in range(RETRIES):
                try:
                    headers = {"Range": f"bytes={have}-"} if have else None
                    # A blob of unknown size (the descriptor need not say) gets its time a
                    # window at a time, renewed as each window arrives.
                    rest = size - have if size is not None else WINDOW
                    mark = have + WINDOW
                    resp, conn = self.get(path, headers, rest)
                    try:
                        if resp.status == 404:
                            raise ImageError(
                                f"{what}: the manifest names a blob the registry does not have"
                            )
                        if resp.status == 200 and have:
                            # The server ignored the Range: start over.
                            out.seek(0)
                            out.truncate()
                            sha, have = hashlib.sha256(), 0
                        elif resp.status not in (200, 206):
                            raise ImageError(f"{what}: HTTP {resp.status}")
                        # read1: one receive at a time, so a cut connection ends the loop
                        # at once (read would wait to fill the whole chunk).
                        while chunk := resp.read1(_CHUNK):
                            out.write(chunk)
                            sha.update(chunk)
                            have += len(chunk)
                            progress(len(chunk))
                            if size is not None and have > size:
                                raise ImageError(f"{what}: longer than the {size} bytes declared")
                            if size is None and have >= mark and not conn.expired:
                                conn.arm(timedhttp.allowance(WINDOW))
                                mark = have + WINDOW
                    except (http.client.HTTPException, OSError):
                        self.too_slow(conn, "GET", path)
                        raise
                    finally:
                        conn.close()
                    self.too_slow(conn, "GET", path)
                    if size is not None and have < size:
                        raise Transient(f"{what}: connection closed after {have} of {size} bytes")
                    break
                except (Transient, http.client.HTTPException, OSError, socket.timeout) as e:
                    if attempt == RETRIES - 1:
                        raise ImageError(
                            f"{what}: download failed after {RETRIES} tries: {e}"
                        ) from e
                    time.sleep(0.2 * 2**attempt)
        if "sha256:" + sha.hexdigest() != digest:
            os.unlink(dest)
            raise ImageError(
                f"{what}: content does not match its digest (got sha256:{sha.hexdigest()}); "
                "refusing the layer"
            )


def resolve(client: Client) -> tuple[oci.Resolved, list[dict[str, Any]]]:
    """The image's config (verified) and its layer descriptors, choosing the host's platform
    from a multi-platform index."""
    ref = client.ref
    what = f"{ref.registry}/{ref.repository}:{ref.reference}"
    body, mt = client.small("manifests", ref.reference, ACCEPT)
    if ref.digest:
        oci.verify(body, ref.digest, what + " manifest")
    doc = oci.parse_json(body, what + " manifest")
    mt = doc.get("mediaType") or mt
    if mt in oci.INDEX_TYPES or "manifests" in doc:
        desc = oci.pick_manifest(doc, what)
        body, mt = client.small("manifests", desc["digest"], ACCEPT)
        oci.verify(body, desc["digest"], what + " manifest", desc.get("size"))
        doc = oci.parse_json(body, what + " manifest")
    config_desc, layer_descs = oci.check_manifest(doc, what)
    cdata, _ = client.small("blobs", config_desc["digest"])
    oci.verify(cdata, config_desc["digest"], what + " config", config_desc.get("size"))
    cfg = oci.check_config(cdata, what, len(layer_descs))
    return oci.Resolved(cfg, config_desc["digest"], [], [what]), layer_descs


def download_layers(
    client: Client,
    descs: list[dict[str, Any]],
    needed: list[bool],
    progress: Callable[[int], None],
) -> list[concurrent.futures.Future[Optional[Path]]]:
    """Starts downloading the needed layers (three at a time) into private temporary files."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="pyrt-pull")
    tmpdir = store.tmp_dir()

    def fetch(d: dict[str, Any]) -> Path:
        fd, name = tempfile.mkstemp(dir=tmpdir, prefix="blob-" + hex_of(d["digest"], "blob")[:12])
        os.close(fd)
        try:
            client.blob_to_file(d["digest"], Path(name), d.get("size"), progress)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        return Path(name)

    futures: list[concurrent.futures.Future[Optional[Path]]] = []
    for d, need in zip(descs, needed):
        if need:
            futures.append(pool.submit(fetch, d))
        else:
            f: concurrent.futures.Future[Optional[Path]] = concurrent.futures.Future()
            f.set_result(None)
            futures.append(f)
    pool.shutdown(wait=False)
    return futures


def opener(fut: concurrent.futures.Future[Optional[Path]]) -> Callable[[], IO[bytes]]:
    """Opens the downloaded blob, waiting for its download."""

    def open_blob() -> IO[bytes]:
        path = fut.result()
        if path is None:
            raise ImageError("internal: a layer in the store was asked for its blob")
        return open(path, "rb")

    return open_blob


def discard(futures: list[concurrent.futures.Future[Optional[Path]]]) -> None:
    """Cancels downloads not started, waits for the others, and deletes their files."""
    for f in futures:
        f.cancel()
    for f in futures:
        if f.cancelled():
            continue
        with contextlib.suppress(BaseException):
            path = f.result()
            if path is not None:
                os.unlink(path)
