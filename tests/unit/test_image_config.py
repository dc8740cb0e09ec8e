"""Docker's rules for Entrypoint, Cmd and users, without containers."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyrt
from pyrt.image.config import ImageConfig, command_for


@pytest.mark.parametrize(
    "ep,cmd,command,entrypoint,expected",
    [
        (None, ["sh"], None, None, ["sh"]),
        (["/init"], ["serve"], None, None, ["/init", "serve"]),
        (["/init"], ["serve"], ["debug"], None, ["/init", "debug"]),
        (["/init"], ["serve"], None, ["/other"], ["/other"]),
        (["/init"], ["serve"], ["x"], ["/other"], ["/other", "x"]),
        (["/init"], ["serve"], None, [], []),
        (None, None, ["echo"], None, ["echo"]),
    ],
)
def test_command_rules(ep, cmd, command, entrypoint, expected) -> None:  # type: ignore[no-untyped-def]
    cfg = ImageConfig(entrypoint=ep, cmd=cmd)
    assert command_for(cfg, command, entrypoint) == expected


def test_config_from_oci() -> None:
    cfg = ImageConfig.from_oci({"Env": ["A=1", "B=x=y"], "WorkingDir": "/w", "User": "app",
                                "ExposedPorts": {"80/tcp": {}}, "Labels": {"k": "v"}})  # fmt: skip
    assert cfg.env == {"A": "1", "B": "x=y"} and cfg.workdir == "/w" and cfg.user == "app"
    assert cfg.exposed_ports == ["80/tcp"] and cfg.labels == {"k": "v"}
    assert ImageConfig.from_oci(cfg.to_dict()) == cfg


def test_resolve_user(rootfs: Path) -> None:
    img = pyrt.Image.load(rootfs)
    assert img.resolve_user(None) == img.resolve_user("root")
    u = img.resolve_user("app")
    assert (u.uid, u.gid, u.additional_gids, u.home) == (1000, 1000, (10, 50), "/home/app")
    u = img.resolve_user("app:staff")
    assert (u.uid, u.gid) == (1000, 50)
    u = img.resolve_user("4242")
    assert (u.uid, u.gid, u.home) == (4242, 0, "/")
    with pytest.raises(ValueError):
        img.resolve_user("ghost")
    with pytest.raises(ValueError):
        img.resolve_user("app:nogroup-here")


def test_read_file_stays_inside_the_image(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/shadow")  # absolute: resolved inside the image
    img = pyrt.Image.load(root)
    assert img.read_file("/etc/passwd") is None


def _settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files made a moment ago count as settled (as they would two seconds later). The tests
    change a file a tick of the clock (50 ms) after the last change, so its times move."""
    from pyrt.image import image

    monkeypatch.setattr(image, "_SETTLED_NS", 0)


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = pyrt.Image.read_file

    def read_file(self: pyrt.Image, path: str) -> bytes | None:
        seen.append(path)
        return real(self, path)

    monkeypatch.setattr(pyrt.Image, "read_file", read_file)
    return seen


def _rootfs(root: Path, app_uid: int) -> Path:
    (root / "etc").mkdir(parents=True)
    passwd = f"root:x:0:0::/root:/bin/sh\napp:x:{app_uid}:1::/h:/bin/sh\n"
    (root / "etc" / "passwd").write_text(passwd)
    (root / "etc" / "group").write_text("root:x:0:\n")
    return root


def test_a_rootfs_users_answer_is_kept_while_its_files_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    _settled(monkeypatch)
    reads = _reads(monkeypatch)
    root = _rootfs(tmp_path / "r", 1000)
    img = pyrt.Image.load(root)
    assert img.resolve_user("app").uid == 1000
    assert img.resolve_user("app").uid == 1000
    assert reads == ["/etc/passwd", "/etc/group"]  # (the second answer was the first's)
    # Written in place, same size: the change time moved (a tick of the clock later).
    time.sleep(0.05)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:2000:1::/h:/bin/sh\n")
    assert img.resolve_user("app").uid == 2000
    # Renamed into place: another inode.
    time.sleep(0.05)
    new = root / "etc" / "passwd.new"
    new.write_text("root:x:0:0::/root:/bin/sh\napp:x:3000:1::/h:/bin/sh\n")
    new.rename(root / "etc" / "passwd")
    assert img.resolve_user("app").uid == 3000
    # Removed: the user is gone.
    (root / "etc" / "passwd").unlink()
    with pytest.raises(ValueError):
        img.resolve_user("app")


def test_a_rootfs_user_is_read_again_through_a_symlink_or_a_fresh_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _reads(monkeypatch)
    root = _rootfs(tmp_path / "r", 1000)
    img = pyrt.Image.load(root)
    # Changed a moment ago (as just made): read at each start, however quick the change.
    img.resolve_user("app")
    img.resolve_user("app")
    assert reads.count("/etc/passwd") == 2
    _settled(monkeypatch)
    # A symlink on the way: the files are found inside the image, which a host path is not.
    (root / "etc" / "passwd").rename(root / "etc" / "real")
    (root / "etc" / "passwd").symlink_to("real")
    del reads[:]
    assert img.resolve_user("app").uid == 1000
    assert img.resolve_user("app").uid == 1000
    assert reads.count("/etc/passwd") == 2
