"""pyrt's errors cross process boundaries (multiprocessing, a ProcessPoolExecutor running
containers in workers) whole: the class, the message and every field. By default Python
rebuilds an exception by calling its class with the message alone, which the errors that take
their fields refused (a TypeError in the parent instead of the error)."""

from __future__ import annotations

import pickle

import pytest

import pyrt
from pyrt import errors

CASES = [
    pyrt.PyrtError("plain"),
    pyrt.ImageError("a bad layer"),
    pyrt.ImageNotFound("no image x"),
    pyrt.UnsafeImageError("../x: leaves its root"),
    pyrt.InvalidOption("memory='x': not a size"),
    pyrt.PathNotFound("/etc/nope"),
    pyrt.SpawnError("executable file not found: /bin/nope", stage="exec", errno=2),
    pyrt.InvalidArgument("a NUL byte in argv[1]"),
    pyrt.ContainerError(3, ["sh", "-c", "exit 3"], b"out", b"err", waiting_for="the log"),
    pyrt.TimeoutExpired(["sleep", "9"], 1.5, b"o", b"e"),
    pyrt.TimeoutExpired(["app"], 2.0, waiting_for="port 80"),
    pyrt.OutputLimitExceeded(["yes"], "stdout", 10, b"y\n" * 5, b""),
    pyrt.BuildError("failed", "Containerfile", 3, "RUN false", output=b"no", returncode=1),
]


@pytest.mark.parametrize("e", CASES, ids=lambda e: type(e).__name__)
def test_an_error_comes_back_from_pickle_whole(e: pyrt.PyrtError) -> None:
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e)
    assert str(back) == str(e)
    assert back.args == e.args
    assert vars(back) == vars(e)
    if isinstance(e, OSError):
        assert isinstance(back, OSError)
        assert (back.errno, back.filename) == (e.errno, e.filename)


def test_every_error_class_is_covered() -> None:
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)}
    assert classes <= {type(e) for e in CASES}, classes - {type(e) for e in CASES}
