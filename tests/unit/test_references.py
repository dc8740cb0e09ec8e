"""Image references as Docker writes them, and the ones that are not references."""

from __future__ import annotations

import pytest

import pyrt
from pyrt.image.registry import DOCKER_HUB, parse_reference


@pytest.mark.parametrize(
    "ref,registry,repo,tag,digest",
    [
        ("busybox", DOCKER_HUB, "library/busybox", "latest", None),
        ("busybox:1.36", DOCKER_HUB, "library/busybox", "1.36", None),
        ("docker.io/library/busybox", DOCKER_HUB, "library/busybox", "latest", None),
        ("user/app:v2", DOCKER_HUB, "user/app", "v2", None),
        ("127.0.0.1:5000/bb:latest", "127.0.0.1:5000", "bb", "latest", None),
        ("localhost/a/b", "localhost", "a/b", "latest", None),
        ("ghcr.io/o/r/x:1", "ghcr.io", "o/r/x", "1", None),
        ("quay.io/x@sha256:" + "a" * 64, "quay.io", "x", None, "sha256:" + "a" * 64),
    ],
)
def test_references(ref: str, registry: str, repo: str, tag: str, digest: str) -> None:
    r = parse_reference(ref)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repo, tag, digest)


@pytest.mark.parametrize(
    "ref", ["Busybox", "bb:../x", "bb@sha256:123", "127.0.0.1:5000/BB", "a//b", "bb:"]
)
def test_bad_references(ref: str) -> None:
    with pytest.raises(pyrt.ImageError):
        parse_reference(ref)
