"""Layers and manifests that try to escape or lie: each is refused with a typed error naming the
entry, or (where the spec allows the shape) kept inside the layer's root. In every case nothing
appears outside the store, and a refused image leaves no layer and no temporary file behind."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imagetools import Entry, busybox_layer, d, make_layout, store_listing

import pyrt


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "store"
    monkeypatch.setenv("PYRT_ROOT", str(root))
    yield root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host directory a hostile layer aims at, with a file it would like to delete."""
    o = tmp_path / "outside"
    o.mkdir()
    (o / "canary").write_text("still here\n")
    return o


def assert_nothing_left(store: Path) -> None:
    left = {p for p in store_listing(store) if p.startswith(("layers/", "tmp/", "flat/"))}
    assert not left, f"a refused image left {sorted(left)}"


def outside_untouched(outside: Path) -> None:
    assert sorted(os.listdir(outside)) == ["canary"]
    assert (outside / "canary").read_text() == "still here\n"
    assert os.listxattr(outside) == []


REFUSED = {
    "dotdot": ([Entry("../escape", b"x")], pyrt.UnsafeImageError, "'..'"),
    "dotdot-inside": ([Entry("a/../../escape", b"x")], pyrt.UnsafeImageError, "'..'"),
    "hardlink-dotdot": (
        [Entry("h", kind=tarfile.LNKTYPE, link="../../../etc/passwd")],
        pyrt.UnsafeImageError,
        "'..'",
    ),
    "hardlink-missing": (
        [Entry("h", kind=tarfile.LNKTYPE, link="/etc/shadow")],
        pyrt.ImageError,
        "not in the image",
    ),
    "hardlink-to-dir": (
        [d("dir"), Entry("h", kind=tarfile.LNKTYPE, link="dir")],
        pyrt.UnsafeImageError,
        "directory",
    ),
    "whiteout-dotdot": ([d("a"), Entry("a/.wh...", b"")], pyrt.UnsafeImageError, "whiteout"),
    "whiteout-dot": ([Entry(".wh..", b"")], pyrt.UnsafeImageError, "whiteout"),
    "symlink-loop": (
        [
            Entry("l1", kind=tarfile.SYMTYPE, link="l2"),
            Entry("l2", kind=tarfile.SYMTYPE, link="l1"),
            Entry("l1/f", b"x"),
        ],
        pyrt.UnsafeImageError,
        "symlink loop",
    ),
    "parent-is-a-file": ([Entry("f", b"x"), Entry("f/g", b"y")], pyrt.UnsafeImageError, "'f'"),
}


@pytest.mark.parametrize("shape", sorted(REFUSED))
def test_hostile_layer_is_refused(shape: str, store: Path, tmp_path: Path, outside: Path) -> None:
    entries, error, match = REFUSED[shape]
    layout = make_layout(tmp_path / "lay", [entries])
    with pytest.raises(error, match=match) as exc:
        pyrt.Image.load(layout)
    assert "layer 1 of 1" in str(exc.value)
    assert_nothing_left(store)
    outside_untouched(outside)


def test_symlinked_parents_stay_inside(
    store: Path, tmp_path: Path, outside: Path, rootfs: Path
) -> None:
    """Absolute and climbing symlinks planted by an earlier entry or layer are resolved inside
    the layer's root, for files, whiteouts and opaque markers alike."""
    layer1 = [
        *busybox_layer(rootfs),
        Entry("abs", kind=tarfile.SYMTYPE, link=str(outside)),
        Entry("climb", kind=tarfile.SYMTYPE, link="../../../../.." + str(outside)),
        Entry("abs/written", b"inside\n"),
    ]
    layer2 = [
        Entry("abs", kind=tarfile.SYMTYPE, link=str(outside)),
        Entry("climb/.wh.canary", b""),
        Entry("abs/.wh..wh..opq", b""),
        Entry("/absolute-name", b"rooted\n"),
    ]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [layer1, layer2]))
    outside_untouched(outside)
    r = pyrt.run(img, ["sh", "-c", f"cat /absolute-name; ls -A {outside}"], text=True)
    # Inside, the opaque marker hides what layer 1 wrote there.
    assert r.stdout == "rooted\n"
    written = Path(img.lower[1]) / str(outside).lstrip("/") / "written"
    assert written.read_text() == "inside\n"


def _layout_with(tmp_path: Path, rootfs: Path) -> tuple[Path, dict[str, object]]:
    layout = make_layout(tmp_path / "lay", [busybox_layer(rootfs)])
    index = json.loads((layout / "index.json").read_text())
    mpath = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    return layout, json.loads(mpath.read_text())


def test_blob_digest_mismatch(store: Path, tmp_path: Path, rootfs: Path) -> None:
    layout, manifest = _layout_with(tmp_path, rootfs)
    blob = layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]  # type: ignore[index]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(pyrt.ImageError, match="does not match its digest"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_diff_id_mismatch(store: Path, tmp_path: Path, rootfs: Path) -> None:
    from imagetools import image_manifest, layer_tar, named, write_index

    layout = tmp_path / "lay"
    desc = image_manifest(
        layout, [layer_tar(busybox_layer(rootfs))], ["gzip"], diff_ids=["sha256:" + "0" * 64]
    )
    write_index(layout, [named(desc, "t")])
    with pytest.raises(pyrt.ImageError, match="diff_id"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_missing_blob(store: Path, tmp_path: Path, rootfs: Path) -> None:
    layout, manifest = _layout_with(tmp_path, rootfs)
    (layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]).unlink()  # type: ignore[index]
    with pytest.raises(pyrt.ImageError, match="missing"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


@pytest.mark.parametrize("which", ["index.json", "layer blob"])
def test_layout_file_that_is_a_fifo(which: str, store: Path, tmp_path: Path, rootfs: Path) -> None:
    """A FIFO in place of a layout's file would block its open forever (no writer ever
    comes): refused at once with an ImageError naming it."""
    layout, manifest = _layout_with(tmp_path, rootfs)
    if which == "index.json":
        target, name = layout / "index.json", "index.json"
    else:
        digest = manifest["layers"][0]["digest"][7:]  # type: ignore[index]
        target, name = layout / "blobs" / "sha256" / digest, digest
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(pyrt.ImageError, match=f"{name}.* not a regular file"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_blob_symlinked_to_a_host_file_is_not_read(
    store: Path, tmp_path: Path, rootfs: Path
) -> None:
    """A layout's blob that is a symlink out of the layout is resolved inside it (and so is
    missing), even when the host file has the very content the digest names."""
    layout, manifest = _layout_with(tmp_path, rootfs)
    cfg = layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]  # type: ignore[index]
    host_copy = tmp_path / "host-config.json"
    host_copy.write_bytes(cfg.read_bytes())
    cfg.unlink()
    cfg.symlink_to(host_copy)
    with pytest.raises(pyrt.ImageError, match="missing"):
        pyrt.Image.load(layout)


def test_malformed_digest_in_manifest(store: Path, tmp_path: Path, rootfs: Path) -> None:
    layout, manifest = _layout_with(tmp_path, rootfs)
    manifest["layers"][0]["digest"] = "sha256:../../../../etc/passwd"  # type: ignore[index]
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + digest,
                        "size": len(data),
                    }
                ],
            }
        )
    )
    with pytest.raises(pyrt.ImageError, match="malformed digest"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_manifest_that_lies_about_its_digest(store: Path, tmp_path: Path, rootfs: Path) -> None:
    layout, manifest = _layout_with(tmp_path, rootfs)
    index = json.loads((layout / "index.json").read_text())
    mpath = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    data = json.dumps(manifest)
    mpath.write_text(data[:-1] + " ")  # same size (a size that lies is refused on its own)
    with pytest.raises(pyrt.ImageError, match="does not match its digest"):
        pyrt.Image.load(layout)


def test_corrupt_gzip_layer(store: Path, tmp_path: Path, rootfs: Path) -> None:
    from imagetools import _blob, write_index

    layout = tmp_path / "lay"
    raw = gzip.compress(b"x" * 100_000)[:-40] + b"\0" * 40
    ldigest = _blob(layout, raw)
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
    }
    cdata = json.dumps(cfg).encode()
    manifest = {
        "schemaVersion": 2,
        "config": {"digest": _blob(layout, cdata), "size": len(cdata)},
        "layers": [
            {
                "digest": ldigest,
                "size": len(raw),
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            }
        ],
    }
    mdata = json.dumps(manifest).encode()
    write_index(
        layout,
        [
            {
                "digest": _blob(layout, mdata),
                "size": len(mdata),
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
            }
        ],
    )
    with pytest.raises(pyrt.ImageError, match="layer 1 of 1"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_decompression_bomb_limits(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyrt.image.unpack as unpack

    monkeypatch.setattr(unpack, "MAX_BYTES", 50_000)
    layout = make_layout(tmp_path / "lay", [[Entry("big", b"\0" * 100_000)]])
    with pytest.raises(pyrt.ImageError, match="more than 50000 bytes"):
        pyrt.Image.load(layout)
    monkeypatch.setattr(unpack, "MAX_ENTRIES", 10)
    layout = make_layout(tmp_path / "lay2", [[Entry(f"f{i}", b"") for i in range(20)]])
    with pytest.raises(pyrt.ImageError, match="more than 10 entries"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_layer_caps_from_the_environment(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_layout(tmp_path / "lay", [[Entry("big", b"\0" * 100_000)]])
    monkeypatch.setenv("PYRT_MAX_LAYER_SIZE", "64k")
    with pytest.raises(pyrt.ImageError, match="layer too large: more than 65536 bytes"):
        pyrt.Image.load(layout)
    monkeypatch.setenv("PYRT_MAX_LAYER_SIZE", "lots")
    with pytest.raises(ValueError, match="PYRT_MAX_LAYER_SIZE"):
        pyrt.Image.load(layout)
    # A cap beyond what anything could hold means no cap below it (not an OverflowError).
    monkeypatch.setenv("PYRT_MAX_LAYER_SIZE", "99999999999t")
    assert pyrt.Image.load(layout).id
    monkeypatch.delenv("PYRT_MAX_LAYER_SIZE")
    monkeypatch.setenv("PYRT_MAX_LAYER_ENTRIES", "9" * 30)
    pyrt.Image.load(layout).remove()
    monkeypatch.setenv("PYRT_MAX_LAYER_ENTRIES", "0")
    with pytest.raises(pyrt.ImageError, match="layer too large: more than 0 entries"):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_overlay_xattrs_in_a_layer_are_dropped(store: Path, tmp_path: Path, rootfs: Path) -> None:
    """trusted.overlay.* steer overlayfs (redirects, metacopy, opacity): only pyrt sets them,
    from whiteouts, never an image's own xattrs."""
    layer = [
        *busybox_layer(rootfs),
        Entry(
            "r",
            b"x",
            pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.user.kept": "yes"},
        ),
    ]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [layer]))
    path = Path(img.lower[0]) / "r"
    assert os.getxattr(path, "user.kept") == b"yes"
    assert "trusted.overlay.redirect" not in os.listxattr(path)


@pytest.mark.parametrize("shape", ["fifo", "device", "huge"])
def test_user_database_that_is_not_a_plain_file(shape: str, rootfs: Path, tmp_path: Path) -> None:
    """An image's /etc/passwd is read on the host to resolve the container's user. A FIFO
    there would block the open (or the read) forever, a device never end, a huge file fill
    memory: each is refused with an ImageError naming the file, before the container's
    process starts, and the container leaves nothing."""
    import shutil

    from helpers import assert_nothing_left_of

    root = tmp_path / "rootfs"
    shutil.copytree(rootfs, root, symlinks=True)
    passwd = root / "etc" / "passwd"
    passwd.unlink()
    if shape == "fifo":
        os.mkfifo(passwd)
    elif shape == "device":
        os.mknod(passwd, 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero's numbers
    else:
        with open(passwd, "wb") as f:
            f.truncate(17 << 20)  # sparse: no disk, 17 MiB of zeros to read
    c = pyrt.Container(pyrt.Image.load(root), ["/bin/true"], user="nobody")
    with pytest.raises(pyrt.ImageError, match="/etc/passwd"):
        c.run()
    assert_nothing_left_of(c.id)  # (its directory may wait a moment in the helper's trash)
    # A link to /dev/null is an image's way of saying "no users": root's container runs.
    passwd.unlink()
    os.mknod(root / "etc" / "null", 0o666 | 0o020000, os.makedev(1, 3))
    passwd.symlink_to("null")
    assert pyrt.run(pyrt.Image.load(root), ["true"]).returncode == 0
    # The same image's file, made plain again, works: the refusal was the shape's.
    passwd.unlink()
    passwd.write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    r = pyrt.run(pyrt.Image.load(root), ["id", "-u"], user="nobody")
    assert r.stdout.strip() == b"65534"


MALFORMED_CONFIGS = {
    "Entrypoint": ({"Entrypoint": "/bin/sh -c true"}, "config.Entrypoint must be a list"),
    "Cmd": ({"Cmd": [1, 2]}, "config.Cmd must be a list of strings"),
    "Env": ({"Env": "A=B"}, "config.Env must be a list of strings"),
    "Env entry": ({"Env": ["=x"]}, "config.Env: '=x' is not NAME=value"),
    "Env NUL": ({"Env": ["A=b\u0000c"]}, "config.Env"),
    "WorkingDir": ({"WorkingDir": 5}, "config.WorkingDir must be a string"),
    "User": ({"User": ["root"]}, "config.User must be a string"),
    "Labels": ({"Labels": ["a"]}, "config.Labels must be an object"),
    "Label value": ({"Labels": {"a": {"b": 1}}}, "config.Labels.a must be a string"),
    "ExposedPorts": ({"ExposedPorts": "80/tcp"}, "config.ExposedPorts must be an object"),
    "StopSignal": ({"StopSignal": {"x": 1}}, "config.StopSignal must be a string"),
    "config": (["x"], "its config is not a JSON object"),
}


@pytest.mark.parametrize("field", sorted(MALFORMED_CONFIGS))
def test_malformed_config_is_an_image_error(
    field: str, store: Path, tmp_path: Path, rootfs: Path
) -> None:
    """A config field of the wrong type (the image spec's: a list of strings, an object, a
    string) is refused at load with an ImageError naming the field, before any layer is
    unpacked: not a TypeError or an AttributeError when a container is made from it."""
    cfg, message = MALFORMED_CONFIGS[field]
    layout = make_layout(tmp_path / "lay", [busybox_layer(rootfs)], config=cfg)  # type: ignore[arg-type]
    with pytest.raises(pyrt.ImageError, match=re.escape(message)):
        pyrt.Image.load(layout)
    assert_nothing_left(store)


def test_well_formed_config_nulls_are_accepted(store: Path, tmp_path: Path, rootfs: Path) -> None:
    """null is every field's "not set" (Docker writes it so)."""
    cfg = {k: None for k in ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "Labels",
                             "ExposedPorts", "Volumes", "StopSignal", "Healthcheck")}  # fmt: skip
    cfg["Cmd"] = ["echo", "ok"]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [busybox_layer(rootfs)], config=cfg))
    assert pyrt.run(img).stdout == b"ok\n"


def test_a_user_database_deleted_by_an_upper_layer_is_absent(
    store: Path, tmp_path: Path, rootfs: Path
) -> None:
    """An upper layer's whiteout of /etc/passwd deletes it from the image: users are looked
    up in no file (as inside the container, which sees none), not in the lower layer's."""
    layout = make_layout(tmp_path / "lay", [busybox_layer(rootfs), [Entry("etc/.wh.passwd", b"")]])
    img = pyrt.Image.load(layout)
    assert pyrt.run(img, ["cat", "/etc/passwd"]).returncode != 0  # the container sees none
    with pytest.raises(pyrt.SpawnError, match="unable to find user app"):
        pyrt.run(img, ["true"], user="app")
    assert pyrt.run(img, ["id", "-u"], user="1000").stdout == b"1000\n"


def test_an_archive_of_countless_entries_is_refused(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tarfile keeps every entry it reads: a docker archive of millions of empty entries would
    hold all of them in memory. Past the bound (lowered here from 65536) it is an ImageError."""
    import io

    from pyrt.image import oci

    monkeypatch.setattr(oci, "MAX_ARCHIVE_MEMBERS", 100)
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(150):
            data = b"[]" if i == 0 else b""
            ti = tarfile.TarInfo("manifest.json" if i == 0 else f"f{i}")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(pyrt.ImageError, match="more than 100 entries; not an image archive"):
        pyrt.Image.load(path)
    assert_nothing_left(store)


def test_a_stored_images_users_are_looked_up_once(
    store: Path, tmp_path: Path, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored image's layers never change, so its /etc/passwd and /etc/group are read once
    per user asked for, not at every start; a rootfs directory, which may change, once while
    they stay the same, and again once they change (``_files_key``)."""
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [busybox_layer(rootfs)]))
    reads: list[str] = []
    real = pyrt.Image.read_file

    def counted(self: pyrt.Image, path: str) -> object:
        reads.append(path)
        return real(self, path)

    monkeypatch.setattr(pyrt.Image, "read_file", counted)
    for _ in range(3):
        assert pyrt.run(img, ["id", "-u"], user="app").stdout == b"1000\n"
    assert reads == ["/etc/passwd", "/etc/group"]
    with pytest.raises(pyrt.SpawnError, match="unable to find user nobody-here"):
        pyrt.run(img, ["true"], user="nobody-here")
    # (Files made a moment ago count as settled, as they would two seconds later.)
    from pyrt.image import image

    monkeypatch.setattr(image, "_SETTLED_NS", 0)
    copy = tmp_path / "copy"
    shutil.copytree(rootfs, copy, symlinks=True)
    directory = pyrt.Image.load(copy)
    reads.clear()
    for _ in range(2):
        assert pyrt.run(directory, ["id", "-u"], user="app").stdout == b"1000\n"
    assert reads == ["/etc/passwd", "/etc/group"]
    time.sleep(0.05)  # (a tick of the file system's clock later)
    passwd = (copy / "etc" / "passwd").read_text().replace(":1000:1000:", ":1001:1000:")
    (copy / "etc" / "passwd").write_text(passwd)
    reads.clear()
    for _ in range(2):
        assert pyrt.run(directory, ["id", "-u"], user="app").stdout == b"1001\n"
    assert reads == ["/etc/passwd", "/etc/group"]


def test_a_layer_too_deep_to_write_out_leaves_no_blob_behind(
    store: Path, tmp_path: Path, rootfs: Path
) -> None:
    """An image whose second layer nests 1200 directories: save and push refuse it with a
    PyrtError naming the depth, and the first layer's blob, already written out for them, is
    deleted (before, it stayed in the store's tmp/ on every try)."""
    deep = [d("/".join(["a"] * (i + 1))) for i in range(1200)]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [busybox_layer(rootfs), deep]))
    try:
        with pytest.raises(pyrt.PyrtError, match="more than 400 directories deep"):
            img.save(str(tmp_path / "out.tar"), format="oci-archive")
        with pytest.raises(pyrt.PyrtError, match="more than 400 directories deep"):
            img.push("127.0.0.1:1/x:1")  # (refused before any connection)
        assert not (tmp_path / "out.tar").exists()
        assert not os.listdir(store / "tmp")  # (os.walk would recurse down the deep layer)
    finally:  # pyrt deletes its deep layer; pytest's cleanup of tmp_path would stop at it
        img.remove()
    assert not [p for p in store_listing(store) if p.startswith("layers/")]


def test_more_layers_than_overlayfs_stacks(store: Path, tmp_path: Path, rootfs: Path) -> None:
    """500 layers run; at 501 a container is an ImageError saying why at once (before, the
    start failed at the overlay's mount blaming the kernel's version)."""
    tiny = [[Entry(f"f{i}", b"x")] for i in range(500)]
    img = pyrt.Image.load(make_layout(tmp_path / "a", [busybox_layer(rootfs), *tiny[:499]]))
    assert pyrt.run(img, ["cat", "/f498"]).stdout == b"x"
    img = pyrt.Image.load(make_layout(tmp_path / "b", [busybox_layer(rootfs), *tiny]))
    with pytest.raises(pyrt.ImageError, match="501 layers; overlayfs stacks at most 500"):
        pyrt.Container(img, ["true"])


@pytest.mark.parametrize(
    "index",
    [
        "{not json",
        "",
        "[1, 2]",
        '{"a:1": 5}',
        '{"a:1": {}}',
        '{"a:1": {"kind": "rootfs", "lower": 5}}',
        '{"a:1": {"kind": "rootfs", "lower": ["/x"], "id": 7}}',
        '{"a:1": {"kind": "rootfs", "lower": ["/x"], "config": [1]}}',
    ],
)
def test_a_damaged_store_index_is_an_image_error_naming_it(
    index: str, store: Path, rootfs: Path
) -> None:
    """The store's index damaged (or edited by hand): every store operation says which file,
    and none writes it back without what it could not read."""
    pyrt.Image.load(rootfs, tag="a:1")
    (store / "images.json").write_text(index)
    for call in (pyrt.images, lambda: pyrt.Image.get("a:1"),
                 lambda: pyrt.Image.load(rootfs, tag="b:1")):  # fmt: skip
        with pytest.raises(pyrt.ImageError, match=r"store's index .*images\.json"):
            call()
    assert (store / "images.json").read_text() == index
