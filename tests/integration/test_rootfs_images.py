"""Rootfs directories and tarballs as images, and tarballs that try to escape."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

import pyrt
from helpers import make_tarball
from pyrt.host.places import store_root


def test_tarball_gz_is_unpacked_once(rootfs_tarball: Path) -> None:
    a = pyrt.Image.load(rootfs_tarball)
    b = pyrt.Image.load(rootfs_tarball)
    assert a.id == b.id and a.lower == b.lower
    assert a.lower[0].startswith(str(store_root()))
    r = pyrt.run(a, ["sh", "-c", "cat /etc/marker; ls -l /bin/sh; stat -c %a /tmp"], text=True)
    lines = r.stdout.splitlines()
    assert lines[0] == "busybox-image" and "-> busybox" in lines[1] and lines[2] == "1777"


@pytest.mark.parametrize("mode,suffix", [("w", "tar"), ("w:xz", "tar.xz")])
def test_tarball_plain_and_xz(rootfs: Path, tmp_path: Path, mode: str, suffix: str) -> None:
    t = make_tarball(rootfs, tmp_path / f"bb.{suffix}", mode)
    img = pyrt.Image.load(t)
    assert pyrt.run(img, ["cat", "/etc/marker"]).stdout == b"busybox-image\n"
    img.remove()


def test_tarball_zstd(rootfs: Path, tmp_path: Path) -> None:
    import zstandard  # the tests' zstd writer (the package reads zstd in its core)

    plain = make_tarball(rootfs, tmp_path / "bb.tar", "w")
    zst = tmp_path / "bb.tar.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    img = pyrt.Image.load(zst)
    assert pyrt.run(img, ["cat", "/etc/marker"]).stdout == b"busybox-image\n"
    img.remove()


def test_ownership_modes_and_hardlinks_survive(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, kind in (("bin", tarfile.DIRTYPE), ("data", tarfile.DIRTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = kind, 0o755
            tf.addfile(ti)
        bb = tarfile.TarInfo("bin/busybox")
        data = Path("/bin/busybox").read_bytes()
        bb.size, bb.mode = len(data), 0o755
        tf.addfile(bb, io.BytesIO(data))
        f = tarfile.TarInfo("data/owned")
        f.size, f.mode, f.uid, f.gid = 3, 0o4750, 1234, 5678
        tf.addfile(f, io.BytesIO(b"abc"))
        h = tarfile.TarInfo("data/hard")
        h.type, h.linkname = tarfile.LNKTYPE, "data/owned"
        tf.addfile(h)
    t = tmp_path / "img.tar"
    t.write_bytes(buf.getvalue())
    img = pyrt.Image.load(t)
    r = pyrt.run(img, ["/bin/busybox", "stat", "-c", "%a %u %g %h %i", "/data/owned", "/data/hard"],
                 text=True)  # fmt: skip
    a, b = r.stdout.splitlines()
    assert a.split()[:4] == ["4750", "1234", "5678", "2"] and a == b
    img.remove()


def _tar(tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for ti, data in entries:
            if data:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    p = tmp_path / "evil.tar"
    p.write_bytes(buf.getvalue())
    return p


def _ti(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, linkname, 0o644
    return ti


def _no_partial_layers() -> None:
    tmp = store_root() / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []


def test_dotdot_entry_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "escaped"
    t = _tar(tmp_path, [(_ti(f"../../../../../../{target}"), b"x")])
    with pytest.raises(pyrt.UnsafeImageError, match=r"\.\."):
        pyrt.Image.load(t)
    assert not target.exists()
    _no_partial_layers()


def test_write_through_a_symlinked_directory_stays_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    t = _tar(tmp_path, [
        (_ti("link", tarfile.SYMTYPE, str(outside)), b""),
        (_ti("link/pwned"), b"x"),
    ])  # fmt: skip
    img = pyrt.Image.load(t)
    assert os.listdir(outside) == []
    # The write landed inside the image, where the link points when the image is the root.
    root = Path(img.lower[0])
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"x"
    img.remove()


def test_relative_symlink_climbing_out_stays_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside2"
    outside.mkdir()
    t = _tar(tmp_path, [
        (_ti("a", tarfile.DIRTYPE), b""),
        (_ti("a/up", tarfile.SYMTYPE, "../../../../../../../../" + str(outside)), b""),
        (_ti("a/up/pwned"), b"x"),
    ])  # fmt: skip
    img = pyrt.Image.load(t)
    assert os.listdir(outside) == []
    img.remove()


def test_hardlink_to_an_outside_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s")
    t = _tar(tmp_path, [(_ti("h", tarfile.LNKTYPE, str(secret)), b"")])
    with pytest.raises(pyrt.ImageError, match="not in the image"):
        pyrt.Image.load(t)
    assert secret.stat().st_nlink == 1
    _no_partial_layers()


def test_hardlink_through_a_symlink_is_resolved_inside(tmp_path: Path) -> None:
    secret = tmp_path / "secret2"
    secret.write_text("s")
    t = _tar(tmp_path, [
        (_ti("l", tarfile.SYMTYPE, str(tmp_path)), b""),
        (_ti("h", tarfile.LNKTYPE, "l/secret2"), b""),
    ])  # fmt: skip
    with pytest.raises(pyrt.ImageError):
        pyrt.Image.load(t)
    assert secret.stat().st_nlink == 1
    _no_partial_layers()


def test_truncated_tarball_is_an_image_error(rootfs_tarball: Path, tmp_path: Path) -> None:
    data = rootfs_tarball.read_bytes()
    t = tmp_path / "trunc.tar.gz"
    t.write_bytes(data[: len(data) // 2])
    with pytest.raises(pyrt.ImageError, match=r"trunc\.tar\.gz"):
        pyrt.Image.load(t)
    _no_partial_layers()


def test_not_a_tarball(tmp_path: Path) -> None:
    t = tmp_path / "junk.tar"
    t.write_bytes(b"this is not a tar archive at all" * 100)
    with pytest.raises(pyrt.ImageError, match=r"junk\.tar"):
        pyrt.Image.load(t)
    _no_partial_layers()


def test_entry_count_limit(tmp_path: Path) -> None:
    from pyrt.image.unpack import unpack

    t = _tar(tmp_path, [(_ti(f"f{i}"), b"x") for i in range(20)])
    dest = tmp_path / "d"
    dest.mkdir()
    with open(t, "rb") as f, pytest.raises(pyrt.ImageError, match="more than 10 entries"):
        unpack(f, str(dest), what="t", max_entries=10)


def test_tag_get_images_remove(rootfs_tarball: Path) -> None:
    img = pyrt.Image.load(rootfs_tarball, tag="bb-test:gz")
    assert pyrt.Image.get("bb-test:gz").id == img.id
    assert any("bb-test:gz" in i.tags for i in pyrt.images())
    lower = img.lower[0]
    img.remove()
    with pytest.raises(pyrt.ImageNotFound):
        pyrt.Image.get("bb-test:gz")
    assert not os.path.exists(lower)
