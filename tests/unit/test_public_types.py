"""`import pyrt` resolves its names on first use (PEP 562); a type checker must still see every
one of them, and `pyrt.aio`, as what they are: a user's `mypy --strict` of code that uses them
finds no error and the right types."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

USER_CODE = """
import pyrt

def use(img: pyrt.Image) -> bytes:
    c: pyrt.Container = pyrt.Container(img, ["true"], mounts=[pyrt.Tmpfs("/x")])
    with pyrt.Pool(img, ["sleep", "1"], size=1) as pool:
        with pool.acquire() as d:
            assert isinstance(d, pyrt.Container)
    r: pyrt.Result = pyrt.run(img, ["true"], stdout=pyrt.PIPE, stderr=pyrt.STDOUT)
    net: pyrt.Network = pyrt.Network()
    h = pyrt.Healthcheck(["true"])
    cfg: pyrt.ImageConfig = img.config
    built: pyrt.Image = pyrt.build(".")
    assert c and net and h and cfg and built and pyrt.images() is not None
    assert pyrt.DEVNULL != pyrt.PIPE and pyrt.Bind is not None and pyrt.Stats is not None
    return r.stdout if isinstance(r.stdout, bytes) else b""

async def use_aio(img: pyrt.Image) -> int:
    r = await pyrt.aio.run(img, ["true"])
    return r.returncode

try:
    pass
except pyrt.PyrtError:
    pass
reveal_type(pyrt.aio.run)
reveal_type(pyrt.run)
"""


def test_a_type_checker_sees_every_public_name(tmp_path: Path) -> None:
    f = tmp_path / "user.py"
    f.write_text(USER_CODE)
    mypy = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    cache = f"--cache-dir={tmp_path / 'c'}"
    r = subprocess.run([*mypy, cache, str(f)], capture_output=True, text=True, check=False)
    out = r.stdout + r.stderr
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert errors == [], out
    assert "Coroutine[Any, Any, pyrt.container.results.Result]" in out, out
    assert "-> pyrt.container.results.Result" in out, out
