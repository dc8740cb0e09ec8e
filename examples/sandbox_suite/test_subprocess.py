"""The floor: the same work with no isolation at all."""

import subprocess
import tempfile

import pytest

N = 200


@pytest.mark.parametrize("i", range(N))
def test_square(i):
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["sh", "-c", f"echo $(({i} * {i})) > {d}/out; cat {d}/out"],
                           capture_output=True, check=True)  # fmt: skip
    assert r.stdout == f"{i * i}\n".encode()
