"""What blocks user namespaces is named with the way to allow it; ids are fitted to the maps."""

from __future__ import annotations

from pathlib import Path

import pytest

import pyrt
from pyrt.host import userns
from pyrt.image.image import UserIds


@pytest.mark.parametrize(
    "file,value,named",
    [
        ("sys/user/max_user_namespaces", "0", "user.max_user_namespaces=15000"),
        ("sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=1"),
        ("sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor"),
    ],
)
def test_blocked_because(tmp_path: Path, file: str, value: str, named: str) -> None:
    assert userns.blocked_because(str(tmp_path)) is None
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text(value + "\n")
    why = userns.blocked_because(str(tmp_path))
    assert why is not None and named in why


def test_fit_drops_unmapped_groups_and_refuses_unmapped_users() -> None:
    maps = userns.IdMaps(((0, 1000, 1), (1, 100000, 65536)), ((0, 1000, 1), (1, 100000, 65536)))
    ids = UserIds(uid=1000, gid=1000, additional_gids=(10, 70000), home="/home/app")
    assert userns.fit(ids, maps).additional_gids == (10,)
    one = userns.IdMaps(((0, 1000, 1),), ((0, 1000, 1),))
    with pytest.raises(pyrt.PyrtError, match="subordinate ids"):
        userns.fit(ids, one)


def test_tmp_state_dir_is_owner_only(tmp_path: Path) -> None:
    from pyrt.host.places import _private_tmp_dir

    d = _private_tmp_dir(tmp_path / "mine")
    assert d.stat().st_mode & 0o777 == 0o700
    (tmp_path / "loose").mkdir(mode=0o755)
    assert _private_tmp_dir(tmp_path / "loose").stat().st_mode & 0o777 == 0o700
    (tmp_path / "link").symlink_to(tmp_path / "mine")
    with pytest.raises(pyrt.PyrtError, match="not a directory of this user"):
        _private_tmp_dir(tmp_path / "link")
