"""scripts/check_imports.py finds circles (it is what CI runs), and the tree has none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_imports.py"


def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_python_circles_are_found_and_type_checking_is_not_one(tmp_path: Path) -> None:
    ci = checker()
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import _ext\n")  # an extension, not the package
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")  # deferred: still counts
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import x\n"
    )
    (pkg / "d.py").write_text("from .c import y\n")
    assert ci.circles(ci.python_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


def test_rust_circles_are_found(tmp_path: Path) -> None:
    ci = checker()
    src = tmp_path / "src"
    (src / "child").mkdir(parents=True)
    (src / "lib.rs").write_text("pub mod child;\npub mod spawn;\npub mod wire;\n")
    (src / "child" / "mod.rs").write_text("mod rootfs;\nuse crate::spawn::SYNC;\n")
    (src / "child" / "rootfs.rs").write_text("use super::super::wire::FD;\n")
    (src / "spawn.rs").write_text(
        "use crate::child::ERROR_FD;\n#[cfg(test)]\nmod tests {\n    use crate::wire::X;\n}\n"
    )
    (src / "wire.rs").write_text("#[cfg(test)]\nmod tests {\n    use crate::spawn::Y;\n}\n")
    assert ci.circles(ci.rust_graph(src)) == [["child", "spawn"]]


def test_this_tree_has_no_circles() -> None:
    assert checker().main() == 0
