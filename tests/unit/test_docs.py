"""The documentation's code runs, and its generated parts are current."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyrt

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("page", ["index.md", "tutorial.md", "howto.md", "pytest.md"])
def test_every_python_block_runs(page: str, tmp_path: Path) -> None:
    blocks = BLOCK.findall((DOCS / page).read_text())
    assert blocks, f"{page} has no Python examples"
    namespace: dict[str, object] = {"pyrt": pyrt, "pytest": pytest, "__name__": "docs"}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"{page}[{i}]", "exec"), namespace)
    finally:
        os.chdir(cwd)


def test_readme_example_runs(tmp_path: Path) -> None:
    from helpers import make_busybox_rootfs

    code = BLOCK.findall((DOCS.parent / "README.md").read_text())
    assert code, "the README has its example"
    make_busybox_rootfs(tmp_path / "rootfs")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for i, block in enumerate(code):
            exec(compile(block, f"README.md[{i}]", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)


def test_cli_reference_is_current() -> None:
    script = DOCS.parent / "scripts" / "gen_cli_docs.py"
    env = dict(os.environ, COLUMNS="100")
    r = subprocess.run(
        [sys.executable, str(script), "--check"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
