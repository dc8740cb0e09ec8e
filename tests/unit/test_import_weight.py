"""What importing pyrt costs every interpreter that starts a container (a CLI run, each pytest
session): modules needed only by some operations are imported by those operations. tarfile
(commit, archives, copy out), ctypes (a disk= layer, the rootless view of a root) and platform
were ~13 ms of a ~125 ms import on the development VM."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import pyrt
from pyrt.container.container import Container
from pyrt.image import Image
Image.host()
print(" ".join(m for m in ("tarfile", "ctypes", "platform") if m in sys.modules))
"""


def test_starting_a_container_needs_no_archive_ctypes_or_platform_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == []
