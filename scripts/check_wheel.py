"""Checks a built wheel against the manylinux policy its name claims, from the extension's own
dynamic symbol table: no GLIBC symbol version above the policy's glibc, and no strong import of
a libc function without a version (one the linker could not find in the old glibc it targeted:
it would fail to load there). Prints the wheel's tags and size.

    python scripts/check_wheel.py dist/pyrt-*.whl
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Functions glibc exports that the linker may leave unversioned but weak (Rust's std resolves
# them at run time and falls back when absent); anything else unversioned must not come from libc.
LIBC_HINT = re.compile(r"^(mem|str|pthread_|dl|__|open|close|read|write|stat|fstat|get|set|mmap)")


def main(path: str) -> int:
    wheel = Path(path)
    m = re.search(r"manylinux_?(\d+)_(\d+)_x86_64", wheel.name) or re.search(
        r"manylinux2014", wheel.name
    )
    if m is None:
        print(f"{wheel.name}: no manylinux tag")
        return 1
    limit = (2, 17) if m.group(0) == "manylinux2014" else (int(m.group(1)), int(m.group(2)))
    tags = wheel.name[: -len(".whl")].split("-")[2:]
    print(f"wheel: {wheel.name}")
    print(f"tags: python={tags[0]} abi={tags[1]} platform={tags[2]}")
    print(f"size: {wheel.stat().st_size / 1e6:.2f} MB")
    bad = []
    with tempfile.TemporaryDirectory() as d:
        zipfile.ZipFile(wheel).extractall(d)
        for so in Path(d).rglob("*.so"):
            out = subprocess.run(["objdump", "-T", str(so)], capture_output=True, text=True,
                                 check=True).stdout  # fmt: skip
            for line in out.splitlines():
                v = re.search(r"GLIBC_(\d+)\.(\d+)", line)
                if v and (int(v.group(1)), int(v.group(2))) > limit:
                    bad.append(f"{so.name}: needs {v.group(0)}: {line.split()[-1]}")
                parts = line.split()
                if "*UND*" in line and " w " not in line and len(parts) >= 2:
                    name = parts[-1]
                    if (
                        "GLIBC" not in line
                        and not name.startswith(("Py", "_Py"))
                        and LIBC_HINT.match(name)
                    ):
                        bad.append(f"{so.name}: strong unversioned import {name}")
    for b in bad:
        print("  " + b)
    glibc = f"glibc {limit[0]}.{limit[1]}"
    print(f"policy: {'satisfied' if not bad else 'VIOLATED'} (symbols checked against {glibc})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
