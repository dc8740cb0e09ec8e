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
