"""The same work in a fresh bubblewrap sandbox per test (host filesystem read-only, own /tmp)."""

import subprocess

import pytest

N = 200
BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc",
         "--dev", "/dev", "--tmpfs", "/tmp"]  # fmt: skip


@pytest.mark.parametrize("i", range(N))
def test_square(i):
    r = subprocess.run([*BWRAP, "sh", "-c", f"echo $(({i} * {i})) > /tmp/out; cat /tmp/out"],
                       capture_output=True, check=True)  # fmt: skip
    assert r.stdout == f"{i * i}\n".encode()
