"""``Image.push``: an image to a registry over the OCI distribution API.

Each layer goes as a gzip blob (what every registry and runtime takes). Compression is
deterministic (no name, no time in the header), so a layer always compresses to the same
digest: what a registry already has is seen by a HEAD and not sent again, and a blob pushed to
another repository of the same registry is mounted from there instead of uploaded
(``POST ...?mount=&from=``). Small blobs go in one PUT; large ones in chunks (PATCH with
Content-Range, then the closing PUT). The manifest is an OCI one; a registry that refuses it is
given Docker's schema 2 instead. Credentials are those of ``pull`` and go to the registry only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional

from pyrt.errors import ImageError, PyrtError
from pyrt.host.places import ensure_dir
from pyrt.image import store
from pyrt.image.progress import Progress
from pyrt.image.registry import RETRIES, Client, Reference, Transient, loopback, parse_reference
from pyrt.rootfs import snapshot

if TYPE_CHECKING:
    from pyrt.image import Image  # (images call this module: Image.push)

log = logging.getLogger("pyrt.push")

#: Blobs up to this size go in one PUT; larger ones in chunks of this size.
CHUNK = 16 << 20
_ANSWER = 1 << 16  # what is read of a registry's answer to an upload (its error text)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def push(
    img: Image,
    ref: str,
    insecure: Optional[bool],
    username: Optional[str],
    password: Optional[str],
    progress: Optional[bool],
) -> str:
    """Pushes ``img`` as ``ref``; returns the manifest's digest."""
    if img.kind == "host":
        raise PyrtError("the host image cannot be pushed: it is the host's own filesystem")
    r = parse_reference(ref)
    if ref.partition("@")[2]:
        raise ImageError(f"push {ref!r}: push to a tag, not a digest")
    if insecure is None:
        insecure = loopback(r.registry)
    client = Client(r, insecure, username, password)
    client.actions = "pull,push"
    with snapshot.written(f"push of {ref}"), store.loading():
        layers: list[tuple[str, Path, bool]] = []
        blobs: list[_Gz] = []
        try:
            # One by one: when a later layer cannot be written out, the earlier ones' files
            # are in the list for the cleanup below.
            for layer in snapshot.layer_blobs(img):
                layers.append(layer)
            blobs.extend(_gzipped(diff_id, path) for diff_id, path, _ in layers)
            ids = [b.diff_id for b in blobs]
            config = snapshot.config_blob(img, ids)
            total = sum(b.size for b in blobs) + len(config)
            with Progress(f"push {ref}", total, progress) as bar:
                cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
                _send(client, cdigest, len(config), lambda: _Bytes(config), bar.update)
                for b in blobs:
                    _send(client, b.digest, b.size, b.open, bar.update)
                    _remember(r, b.digest)
            return _put_manifest(client, r, cdigest, len(config), blobs)
        finally:
            # Compressed copies and layers written out for the push are not kept: a layer's
            # compressed digest is (blobs/gzip/<diff_id>.json), and compression repeats exactly.
            for _, path, temporary in layers:
                if temporary:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            for b in blobs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_gz_dir() / b.digest.partition(":")[2])


# --- layers as gzip blobs -----------------------------------------------------------------------


class _Gz:
    def __init__(self, diff_id: str, digest: str, size: int, source: Path) -> None:
        self.diff_id, self.digest, self.size, self.source = diff_id, digest, size, source

    def open(self) -> IO[bytes]:
        """The compressed blob (made again from the layer: compression is deterministic)."""
        kept = _gz_dir() / self.digest.partition(":")[2]
        try:
            return open(kept, "rb")
        except FileNotFoundError:
            digest, _ = _compress(self.source)
        if digest != self.digest:
            raise ImageError(f"layer {self.diff_id}: compresses to {digest} now, not {self.digest}")
        return open(kept, "rb")


def _gz_dir() -> Path:
    return ensure_dir(store.root() / "blobs" / "gzip", 0o700)


def _compress(src: Path) -> tuple[str, int]:
    """Compresses ``src`` into the gzip directory under its own digest; returns (digest,
    size). Concurrent pushes of one layer each write a private file and rename it: the same
    bytes, so whichever rename lands last is as good."""
    fd, tmp = tempfile.mkstemp(dir=_gz_dir(), prefix=".gz-")
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as raw:

            class _Out:
                def write(self, data: bytes) -> int:
                    nonlocal size
                    h.update(data)
                    size += len(data)
                    return raw.write(data)

                def flush(self) -> None:
                    raw.flush()

            with (
                open(src, "rb") as f,
                gzip.GzipFile(
                    filename="", mode="wb", fileobj=_Out(), mtime=0, compresslevel=6
                ) as gz,
            ):
                while chunk := f.read(1 << 20):
                    gz.write(chunk)
        digest = "sha256:" + h.hexdigest()
        os.replace(tmp, _gz_dir() / digest.partition(":")[2])
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return digest, size


def _gzipped(diff_id: str, blob: Path) -> _Gz:
    """The layer ``diff_id`` (its uncompressed blob ``blob``) as a gzip blob; the compressed
    digest of each layer is remembered, the compressed file itself only until the push ends."""
    note = _gz_dir() / f"{diff_id.partition(':')[2]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        doc = json.loads(note.read_text())
        return _Gz(diff_id, str(doc["digest"]), int(doc["size"]), blob)
    digest, size = _compress(blob)
    tmp = note.with_name(f".{note.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"digest": digest, "size": size}))
    os.replace(tmp, note)
    return _Gz(diff_id, digest, size, blob)


# --- blobs ----------------------------------------------------------------------------------


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> IO[bytes]:
        import io

        return io.BytesIO(self.data)

    def __exit__(self, *exc: object) -> None:
        pass


def _send(
    client: Client,
    digest: str,
    size: int,
    opener: Callable[[], Any],
    progress: Callable[[int], None],
) -> None:
    """One blob into the repository, unless it is there already or can be mounted."""
    repo = client.ref.repository
    what = f"{client.ref.registry}/{repo} blob {digest}"
    status = _call(client, "HEAD", f"/v2/{repo}/blobs/{digest}", what)[0]
    if status == 200:
        log.info("%s: already there", what)
        progress(size)
        return
    location = None
    for other in _known(client.ref, digest):
        q = urllib.parse.urlencode({"mount": digest, "from": other})
        status, headers = _call(client, "POST", f"/v2/{repo}/blobs/uploads/?{q}", what)
        if status == 201:
            log.info("%s: mounted from %s", what, other)
            progress(size)
            return
        if status == 202:
            location = headers.get("location")  # the registry started an upload instead
            break
    if location is None:
        status, headers = _call(client, "POST", f"/v2/{repo}/blobs/uploads/", what)
        if status != 202 or not headers.get("location"):
            raise ImageError(f"{what}: the registry refused an upload (HTTP {status})")
        location = headers["location"]
    url = urllib.parse.urljoin(client.url("/"), location)
    if size <= CHUNK:
        with opener() as f:
            data = f.read()
        status, _ = _call(client, "PUT", _with_digest(url, digest), what, data,
                          {"Content-Type": "application/octet-stream"})  # fmt: skip
        if status != 201:
            raise ImageError(f"{what}: upload failed (HTTP {status})")
        log.info("%s: uploaded in one request", what)
        progress(size)
        return
    offset = 0
    with opener() as f:
        while chunk := f.read(CHUNK):
            end = offset + len(chunk) - 1
            status, headers = _call(
                client,
                "PATCH",
                url,
                what,
                chunk,
                {"Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{end}"},
            )
            if status != 202 or not headers.get("location"):
                raise ImageError(f"{what}: chunk at {offset} refused (HTTP {status})")
            url = urllib.parse.urljoin(url, headers["location"])
            offset = end + 1
            progress(len(chunk))
    status, _ = _call(client, "PUT", _with_digest(url, digest), what, b"")
    if status != 201:
        raise ImageError(f"{what}: closing the chunked upload failed (HTTP {status})")
    log.info("%s: uploaded in %d chunks", what, (size + CHUNK - 1) // CHUNK)


def _with_digest(url: str, digest: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = [*urllib.parse.parse_qsl(parts.query, keep_blank_values=True), ("digest", digest)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _call(
    client: Client,
    method: str,
    path: str,
    what: str,
    data: Optional[bytes] = None,
    headers: Optional[dict[str, str]] = None,
) -> tuple[int, dict[str, str]]:
    """A request with retries of transient failures; (status, lower-cased headers)."""
    h = dict(headers or {})
    if data is not None or method in ("POST", "PUT", "PATCH"):
        h["Content-Length"] = str(len(data or b""))
    for attempt in range(RETRIES):
        try:
            resp, conn = client.request(
                method, path, h, (lambda: data) if data else None, expect=_ANSWER
            )
            try:
                body = resp.read(_ANSWER)
            except (http.client.HTTPException, OSError):
                client.too_slow(conn, method, path)
                raise
            finally:
                conn.close()
            client.too_slow(conn, method, path)
        except (Transient, http.client.HTTPException, OSError) as e:
            if attempt == RETRIES - 1 or method == "PATCH":
                raise ImageError(f"{what}: {e}") from e
            time.sleep(0.2 * 2**attempt)
            continue
        if resp.status in (401, 403):
            raise ImageError(f"{what}: access denied (HTTP {resp.status}); check the credentials")
        out = {k.lower(): v for k, v in resp.getheaders()}
        out["body"] = body.decode(errors="replace")[:500]
        return resp.status, out
    raise AssertionError("unreachable")


# --- which repositories have which blobs (for mounts) ---------------------------------------


def _known_path() -> Path:
    return store.root() / "pushed.json"


def _known(ref: Reference, digest: str) -> list[str]:
    try:
        doc = json.loads(_known_path().read_text())
    except (OSError, ValueError):
        return []
    repos = doc.get(digest, []) if isinstance(doc, dict) else []
    return [
        str(x).partition("/")[2]
        for x in repos
        if str(x).partition("/")[0] == ref.registry and str(x).partition("/")[2] != ref.repository
    ][:3]


def _remember(ref: Reference, digest: str) -> None:
    with store.locked():
        try:
            doc = json.loads(_known_path().read_text())
            if not isinstance(doc, dict):
                doc = {}
        except (OSError, ValueError):
            doc = {}
        here = f"{ref.registry}/{ref.repository}"
        repos = [r for r in doc.get(digest, []) if r != here] + [here]
        doc[digest] = repos[-8:]
        tmp = _known_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, _known_path())


# --- the manifest ----------------------------------------------------------------------------


def _put_manifest(client: Client, r: Reference, cdigest: str, csize: int, blobs: list[_Gz]) -> str:
    what = f"{r.registry}/{r.repository}:{r.reference}"
    for media, cmedia, lmedia in ((OCI_MANIFEST, OCI_CONFIG, OCI_LAYER),
                                  (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)):  # fmt: skip
        doc = {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": cmedia, "digest": cdigest, "size": csize},
            "layers": [{"mediaType": lmedia, "digest": b.digest, "size": b.size} for b in blobs],
        }
        raw = json.dumps(doc, indent=1).encode()
        status, headers = _call(client, "PUT", f"/v2/{r.repository}/manifests/{r.reference}",
                                what + " manifest", raw, {"Content-Type": media})  # fmt: skip
        if status in (200, 201):
            log.info("%s: manifest (%s) stored", what, media)
            return headers.get("docker-content-digest") or (
                "sha256:" + hashlib.sha256(raw).hexdigest()
            )
        if status not in (400, 415):
            raise ImageError(f"{what}: manifest refused (HTTP {status}): {headers.get('body')}")
        log.info("%s: %s refused (HTTP %d), trying the next format", what, media, status)
    raise ImageError(f"{what}: the registry takes neither an OCI nor a Docker manifest")
