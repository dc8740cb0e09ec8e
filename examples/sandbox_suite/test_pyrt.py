"""Each test gets a fresh container of the host image (the `sandbox` fixture) and works in it."""

import pytest

N = 200


@pytest.mark.parametrize("i", range(N))
def test_square(sandbox, i):
    r = sandbox.exec(["sh", "-c", f"echo $(({i} * {i})) > /tmp/out; cat /tmp/out"])
    assert r.stdout == f"{i * i}\n".encode()
