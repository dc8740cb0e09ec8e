"""Images made by real tools (umoci, skopeo, buildah) and by hand: OCI layouts, OCI archives and
docker archives, read as the OCI image spec says, stacked with overlayfs, with the config's
defaults applied. The reference for a rootfs is what `umoci unpack` makes of the same image."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from imagetools import (
    HAVE_BUILDAH,
    HAVE_SKOPEO,
    HAVE_UMOCI,
    Entry,
    busybox_layer,
    d,
    image_manifest,
    layer_tar,
    make_layout,
    named,
    run,
    tree_seen_by_container,
    umoci_two_layers,
    umoci_unpacked,
    write_index,
)

import pyrt
from pyrt.image.oci import REF_NAME as REF

needs_umoci = pytest.mark.skipif(not HAVE_UMOCI, reason="needs umoci (Debian package umoci)")
needs_skopeo = pytest.mark.skipif(not HAVE_SKOPEO, reason="needs skopeo (Debian package skopeo)")


@pytest.fixture(scope="module")
def umoci_layout(rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAVE_UMOCI:
        pytest.skip("needs umoci (Debian package umoci)")
    return umoci_two_layers(rootfs, tmp_path_factory.mktemp("umoci"))


@pytest.fixture(scope="module")
def umoci_reference(umoci_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tree a container sees on the rootfs that `umoci unpack` makes."""
    ref = umoci_unpacked(umoci_layout, "bb", tmp_path_factory.mktemp("ref") / "bundle")
    return tree_seen_by_container(pyrt.Image.load(ref))


@needs_umoci
def test_umoci_layout_tree_equals_umoci_unpack(umoci_layout: Path, umoci_reference: str) -> None:
    img = pyrt.Image.load(umoci_layout)
    assert len(img.lower) == 2
    seen = tree_seen_by_container(img)
    assert seen == umoci_reference
    # The layer's deletions and replacements are applied; no whiteout is visible.
    assert "/data/gone" not in seen and "/old/a" not in seen and "/old/c|" in seen
    assert ".wh." not in seen


@needs_umoci
def test_config_drives_defaults(umoci_layout: Path) -> None:
    img = pyrt.Image.load(umoci_layout, ref="bb")
    cfg = img.config
    assert cfg.entrypoint == ["/bin/echo", "ep"] and cfg.cmd == ["c1", "c2"]
    assert cfg.user == "app" and cfg.workdir == "/srv" and cfg.env["FROM_IMAGE"] == "yes"
    assert cfg.exposed_ports == ["8080/tcp"] and cfg.labels == {"org.example": "1"}
    assert pyrt.run(img).stdout == b"ep c1 c2\n"
    # A command replaces Cmd and keeps the Entrypoint; an entrypoint replaces it.
    assert pyrt.run(img, ["x"]).stdout == b"ep x\n"
    r = pyrt.run(
        img,
        ["sh", "-c", "id -u; id -g; pwd; echo $FROM_IMAGE; cat /secret"],
        entrypoint=[],
        text=True,
    )
    assert r.stdout.splitlines() == ["1000", "1000", "/srv", "yes"]
    assert "Permission denied" in r.stderr


@needs_umoci
def test_hardlinks_symlinks_and_modes(umoci_layout: Path) -> None:
    img = pyrt.Image.load(umoci_layout)
    r = pyrt.run(
        img,
        [
            "sh",
            "-c",
            "stat -c '%i %h' /hl/one /hl/two; readlink /lnk; "
            "cat /hl/rel/keep; stat -c '%a %U' /etc/marker /secret /srv",
        ],
        entrypoint=[],
        user="0",
        text=True,
        check=True,
    )
    one, two, lnk, keep, marker, secret, srv = r.stdout.splitlines()
    assert one == two and one.endswith(" 2")
    assert lnk == "/data/keep" and keep == "keep"
    assert marker == "640 root" and secret == "600 root" and srv == "755 app"


@needs_umoci
def test_layers_are_unpacked_once_and_shared(umoci_layout: Path) -> None:
    a = pyrt.Image.load(umoci_layout)
    b = pyrt.Image.load(umoci_layout)
    assert a.lower == b.lower and a.id == b.id
    for layer in a.lower:
        assert layer.startswith(str(pyrt.host.places.store_root()))
    # Two containers share the read-only layers; each writes only to its own upper directory.
    with (
        pyrt.Container(a, ["sleep", "30"], entrypoint=[], user="0") as c1,
        pyrt.Container(a, ["sleep", "30"], entrypoint=[], user="0") as c2,
    ):
        c1.exec(["sh", "-c", "echo one > /data/keep"], check=True)
        assert c2.exec(["cat", "/data/keep"]).stdout == b"keep\n"
    assert pyrt.run(a, ["cat", "/data/keep"], entrypoint=[]).stdout == b"keep\n"


@needs_umoci
@needs_skopeo
@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_archives_from_skopeo(
    umoci_layout: Path, tmp_path: Path, transport: str, umoci_reference: str
) -> None:
    archive = tmp_path / "img.tar"
    run("skopeo", "copy", f"oci:{umoci_layout}:bb", f"{transport}:{archive}:bb:v1")
    img = pyrt.Image.load(archive)
    direct = pyrt.Image.load(umoci_layout)
    assert img.config == direct.config
    assert tree_seen_by_container(img) == umoci_reference
    # Same layers (by their uncompressed digests): nothing is unpacked twice.
    assert img.lower == direct.lower
    with pytest.raises(pyrt.ImageNotFound, match="nope"):
        pyrt.Image.load(archive, ref="nope")


@needs_umoci
@needs_skopeo
def test_zstd_layers_from_skopeo(umoci_layout: Path, tmp_path: Path, umoci_reference: str) -> None:
    out = tmp_path / "zstd"
    run(
        "skopeo",
        "copy",
        "--dest-compress-format",
        "zstd",
        f"oci:{umoci_layout}:bb",
        f"oci:{out}:bb",
    )
    blobs = [p.read_bytes()[:4] for p in (out / "blobs" / "sha256").iterdir()]
    assert b"\x28\xb5\x2f\xfd" in blobs  # really zstd
    assert tree_seen_by_container(pyrt.Image.load(out)) == umoci_reference


def test_opaque_dirs_whiteouts_and_compressions(rootfs: Path, tmp_path: Path) -> None:
    """Shapes umoci does not write: an opaque directory marker, a whiteout of a directory,
    layers gzip, zstd and plain in one image; compared with `umoci unpack` of the same."""
    base = [
        *busybox_layer(rootfs),
        d("opq"),
        Entry("opq/a", b"a"),
        d("opq/sub"),
        Entry("opq/sub/b", b"b"),
        d("wd"),
        Entry("wd/x", b"x"),
        Entry("f", b"f"),
        Entry("hard", b"h", mode=384, uid=7, gid=8),
        Entry("hard2", kind=tarfile.LNKTYPE, link="hard"),
    ]
    top = [
        Entry("opq/.wh..wh..opq", b""),
        Entry("opq/new", b"n"),
        Entry(".wh.wd", b""),
        Entry(".wh.f", b""),
        # Parents not in the layer get the lower layers' metadata (umoci's layer test covers
        # that); new ones would carry the time of the unpack, which differs between two tools.
        d("deep"),
        d("deep/er"),
        Entry("deep/er/file", b"implied parents\n"),
    ]
    # A third, uncompressed layer re-creates what the second deleted.
    third = [Entry("f", b"back\n")]
    layout = make_layout(tmp_path / "lay", [base, top, third], ["gzip", "zstd", None])
    img = pyrt.Image.load(layout)
    r = pyrt.run(
        img,
        [
            "sh",
            "-c",
            "ls -A /opq; ls -d /wd; cat /f; cat /deep/er/file; stat -c '%a %u %g %h' /hard2",
        ],
        text=True,
    )
    assert r.stdout.splitlines() == ["new", "back", "implied parents", "600 7 8 2"]
    assert "/wd" in r.stderr and "No such file" in r.stderr
    if HAVE_UMOCI:
        # umoci 0.4 reads no zstd: its reference is the same layers with gzip.
        same = make_layout(tmp_path / "gz", [base, top, third], ["gzip", "gzip", None])
        ref = umoci_unpacked(same, "t", tmp_path / "bundle")
        assert tree_seen_by_container(img) == tree_seen_by_container(pyrt.Image.load(ref))


def test_hardlink_to_a_lower_layer_is_an_image_error(rootfs: Path, tmp_path: Path) -> None:
    """Each layer is its own overlayfs directory: a hard link to a file of a layer below
    cannot be made (umoci and containerd's overlay snapshotter refuse it too)."""
    layout = make_layout(
        tmp_path / "lay",
        [[*busybox_layer(rootfs), Entry("f", b"x")], [Entry("g", kind=tarfile.LNKTYPE, link="f")]],
    )
    with pytest.raises(pyrt.ImageError, match="hard link target 'f'"):
        pyrt.Image.load(layout)


def test_multi_platform_index_picks_the_host(rootfs: Path, tmp_path: Path) -> None:
    layout = tmp_path / "lay"
    good = image_manifest(layout, [layer_tar(busybox_layer(rootfs))], ["gzip"], {"Cmd": ["true"]})
    other = image_manifest(layout, [layer_tar([Entry("wrong", b"")])], ["gzip"], arch="arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {**other, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {**good, "platform": {"os": "linux", "architecture": "amd64"}},
        ],
    }
    data = json.dumps(index).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    write_index(
        layout,
        [named({"mediaType": index["mediaType"], "digest": digest, "size": len(data)}, "multi")],
    )
    if os.uname().machine != "x86_64":
        pytest.skip("the test image lists amd64 as the matching platform")
    img = pyrt.Image.load(layout)
    assert img.config.cmd == ["true"]
    assert pyrt.run(img, ["cat", "/etc/marker"]).stdout == b"busybox-image\n"


def test_multi_image_layout_needs_ref(rootfs: Path, tmp_path: Path) -> None:
    layout = tmp_path / "lay"
    layer = [layer_tar(busybox_layer(rootfs))]
    a = image_manifest(layout, layer, ["gzip"], {"Cmd": ["echo", "a"]})
    b = image_manifest(layout, layer, ["gzip"], {"Cmd": ["echo", "b"]})
    write_index(layout, [named(a, "app:a"), named(b, "app:b")])
    with pytest.raises(pyrt.ImageError, match=r"pick one with ref=.*app:a|app:a.*ref="):
        pyrt.Image.load(layout)
    assert pyrt.run(pyrt.Image.load(layout, ref="app:b")).stdout == b"b\n"
    assert pyrt.run(pyrt.Image.load(layout, ref="a")).stdout == b"a\n"  # the tag alone
    with pytest.raises(pyrt.ImageNotFound, match="app:a, app:b"):
        pyrt.Image.load(layout, ref="c")
    # With a "latest" among them (the refs `latest` and `byname`), that one loads unasked.
    write_index(layout, [named(a, "byname"), named(b, "latest")])
    assert pyrt.run(pyrt.Image.load(layout)).stdout == b"b\n"
    assert pyrt.run(pyrt.Image.load(layout, ref="byname")).stdout == b"a\n"


@pytest.mark.parametrize("blob", ["manifest", "config", "layer"])
@pytest.mark.parametrize("delta", [-100, 1])
def test_descriptor_sizes_must_match(
    rootfs: Path, tmp_path: Path, blob: str, delta: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image spec: a descriptor's size is the blob's. One that lies (here by `delta`
    bytes) is refused for manifests, configs and layers alike, and nothing is stored."""
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    layout = tmp_path / "lay"
    m = image_manifest(layout, [layer_tar(busybox_layer(rootfs))], ["gzip"], {"Cmd": ["true"]})
    if blob == "manifest":
        m["size"] += delta
    else:
        path = layout / "blobs" / "sha256" / m["digest"].split(":")[1]
        doc = json.loads(path.read_text())
        target = doc["config"] if blob == "config" else doc["layers"][0]
        target["size"] += delta
        raw = json.dumps(doc).encode()
        digest = hashlib.sha256(raw).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(raw)
        m = {**m, "digest": "sha256:" + digest, "size": len(raw)}
    write_index(layout, [m])
    with pytest.raises(pyrt.ImageError, match="but its descriptor says"):
        pyrt.Image.load(layout)
    assert not list((tmp_path / "store").glob("layers/*/root"))


@pytest.mark.skipif(not HAVE_BUILDAH, reason="needs buildah (Debian package buildah)")
def test_buildah_image(rootfs: Path, tmp_path: Path) -> None:
    g = [
        "buildah",
        "--root",
        str(tmp_path / "storage"),
        "--runroot",
        str(tmp_path / "run"),
        "--storage-driver",
        "vfs",
    ]
    ctr = run(*g, "from", "scratch").strip()
    try:
        run(*g, "copy", ctr, f"{rootfs}/", "/")
        run(
            *g,
            "config",
            "--user",
            "app",
            "--workingdir",
            "/home/app",
            "--entrypoint",
            '["/bin/sh", "-c"]',
            "--cmd",
            '["id -un; pwd"]',
            ctr,
        )
        run(*g, "commit", ctr, f"oci:{tmp_path / 'layout'}:b1")
    finally:
        subprocess.run([*g, "rm", ctr], capture_output=True)
        subprocess.run([*g, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(tmp_path / "storage", ignore_errors=True)
    img = pyrt.Image.load(tmp_path / "layout", ref="b1")
    assert pyrt.run(img, text=True).stdout == "app\n/home/app\n"


@needs_umoci
def test_tag_get_remove_and_gc(
    umoci_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    img = pyrt.Image.load(umoci_layout, tag="bb:one")
    img.tag("bb:two")
    got = pyrt.Image.get("bb:one")
    assert got.id == img.id and sorted(got.tags) == ["bb:one", "bb:two"]
    assert [i.id for i in pyrt.images()] == [img.id]
    img.tag("bb")  # "bb" and "bb:latest" name one image, as in Docker
    assert pyrt.Image.get("bb:latest").id == img.id
    assert pyrt.Image.get("bb").id == img.id
    layers = [Path(x) for x in img.lower]
    # A running container keeps its layers through remove() of the image.
    with pyrt.Container(got, ["sleep", "30"], entrypoint=[]) as c:
        img.remove()
        assert all(p.is_dir() for p in layers)
        assert c.exec(["cat", "/data/keep"]).stdout == b"keep\n"
        with pytest.raises(pyrt.ImageNotFound):
            pyrt.Image.get("bb:two")
    r = subprocess.run(
        [sys.executable, "-m", "pyrt.cli", "gc"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYRT_GC_GRACE": "0"},
    )
    assert r.returncode == 0, r.stderr
    assert not any(p.exists() for p in layers)


def _load_in_child(layout: str, store: str, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    os.environ["PYRT_ROOT"] = store
    try:
        q.put(pyrt.Image.load(layout, tag="same:1").lower)
    except BaseException as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


@needs_umoci
def test_concurrent_loads_from_processes(umoci_layout: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_load_in_child, args=(str(umoci_layout), str(store), q))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    assert all(r == results[0] for r in results), results
    assert len(os.listdir(store / "layers")) == 2
    assert os.listdir(store / "tmp") == []


def test_without_overlayfs_the_image_is_flattened(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYRT_NO_OVERLAY", "1")
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    layout = make_layout(
        tmp_path / "lay",
        [
            [*busybox_layer(rootfs), d("opq"), Entry("opq/old", b"o"), Entry("gone", b"g")],
            [Entry("opq/.wh..wh..opq", b""), Entry("opq/new", b"n"), Entry(".wh.gone", b"")],
        ],
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        img = pyrt.Image.load(layout)
    assert any("overlayfs is not available" in str(x.message) for x in w)
    assert len(img.lower) == 1
    r = pyrt.run(
        img, ["sh", "-c", "ls -A /opq; ls /gone; echo x > /opq/w && cat /opq/w"], text=True
    )
    assert r.stdout.splitlines() == ["new", "x"] and "gone" in r.stderr
    # The container wrote to its own copy, not to the flattened image.
    assert not (Path(img.lower[0]) / "opq" / "w").exists()


def test_many_layers(rootfs: Path, tmp_path: Path) -> None:
    """More layers than mount(2)'s one page of overlay options holds (with store paths, about
    forty): the core passes them one by one through fsconfig instead."""
    n = 70
    layers = [busybox_layer(rootfs)] + [[Entry(f"layers/{i:03}", b"%d\n" % i)] for i in range(n)]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", layers))
    assert len(img.lower) == n + 1 and len(":".join(img.lower)) > 4096
    r = pyrt.run(img, ["sh", "-c", "ls /layers | wc -l; cat /layers/069"], text=True, check=True)
    assert r.stdout.split() == [str(n), "69"]


def test_pax_long_names_and_link_targets(rootfs: Path, tmp_path: Path) -> None:
    deep = "/".join(f"a-rather-long-directory-name-{i:02}" for i in range(8))
    target = "/" + deep + "/file"
    layer = [
        *busybox_layer(rootfs),
        Entry(deep + "/file", b"long\n"),
        Entry("short", kind=tarfile.SYMTYPE, link=target),
        Entry("hl", kind=tarfile.LNKTYPE, link=deep + "/file"),
    ]
    img = pyrt.Image.load(make_layout(tmp_path / "lay", [layer]))
    assert len(target) > 255
    r = pyrt.run(img, ["sh", "-c", "cat /short; readlink /short; stat -c %h /hl"], text=True)
    assert r.stdout.splitlines() == ["long", target, "2"]


def test_flattening_understands_rootless_xattr_whiteouts(tmp_path: Path) -> None:
    """A rootless store marks whiteouts as files with user.overlay.whiteout and opaque
    directories with user.overlay.opaque (no CAP_MKNOD for 0:0 devices): the flattened
    fallback must apply those as it applies root's markers."""
    import io

    from pyrt import _core
    from pyrt.image import flatten

    lower = [d("opq"), Entry("opq/old", b"o"), Entry("gone", b"g"), Entry("kept", b"k")]
    upper = [Entry("opq/.wh..wh..opq", b""), Entry("opq/new", b"n"), Entry(".wh.gone", b"")]
    trees = []
    for i, entries in enumerate((lower, upper)):
        tree = tmp_path / f"layer{i}"
        tree.mkdir()
        with io.BytesIO(layer_tar(entries)) as f:
            r, w = os.pipe()
            os.write(w, f.read())
            os.close(w)
            try:
                # privileged=False: the markers a rootless store writes.
                _core.unpack_layer(r, str(tree), "t", "overlay", [], None, True, False,
                                   100, 1 << 20, True, False)  # fmt: skip
            finally:
                os.close(r)
        trees.append(tree)
    assert os.getxattr(trees[1] / "gone", "user.overlay.whiteout") == b""
    assert os.getxattr(trees[1] / "opq", "user.overlay.opaque") == b"y"
    flat = tmp_path / "flat"
    flat.mkdir()
    for tree in trees:
        flatten._apply_layer_tree(tree, flat)
    assert sorted(p.name for p in flat.iterdir()) == ["kept", "opq"]
    assert sorted(p.name for p in (flat / "opq").iterdir()) == ["new"]
    assert "user.overlay.opaque" not in os.listxattr(flat / "opq")


@needs_umoci
def test_umoci_insert_layers_without_end_blocks(
    rootfs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian's umoci 0.4.7 writes `insert` layers that stop right after the file's content
    (no padding, no end blocks; umoci #436). GNU tar and podman take them; so does pyrt."""
    monkeypatch.setenv("PYRT_ROOT", str(tmp_path / "store"))
    layout = make_layout(tmp_path / "lay", [busybox_layer(rootfs)])
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].setdefault("annotations", {})[REF] = "t"
    (layout / "index.json").write_text(json.dumps(index))
    (tmp_path / "hello").write_text("inserted\n")
    run("umoci", "insert", "--image", f"{layout}:t", str(tmp_path / "hello"), "/etc/hello")
    img = pyrt.Image.load(layout, ref="t")
    assert pyrt.run(img, ["cat", "/etc/hello"], text=True).stdout == "inserted\n"
