"""A command's arguments as `checks.args` takes them: the quick way for the usual list of ASCII
text must give what the careful way gives, and refuse the same things with the same errors."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

import pyrt
from pyrt.config import checks


class Args(list[str]):
    """A list of its own kind (a Sequence, not a list by type)."""


@pytest.mark.parametrize(
    "value,expected",
    [
        (["sh", "-c", "echo hi"], ["sh", "-c", "echo hi"]),
        (("sh", "-c"), ["sh", "-c"]),
        (Args(["a", "b"]), ["a", "b"]),
        (["é", "日本", "x"], ["é", "日本", "x"]),
        ([PurePosixPath("/bin/sh"), "-c"], ["/bin/sh", "-c"]),
        ([b"/bin/sh".decode()], ["/bin/sh"]),
    ],
)
def test_arguments_taken(value: object, expected: list[str]) -> None:
    got = checks.args(value, "command")
    assert got == expected and type(got) is list and got is not value


@pytest.mark.parametrize(
    "value,error,words",
    [
        ("sh -c x", TypeError, "command must be a list of arguments"),
        (b"sh", TypeError, "command must be a list of arguments"),
        ((a for a in ["sh"]), TypeError, "not generator"),
        (["sh", 3], TypeError, r"command\[1\] must be a str"),
        (["sh", None], TypeError, r"command\[1\] must be a str"),
        (["sh", "a\0b"], pyrt.InvalidArgument, r"command\[1\] contains a NUL byte"),
        (["sh", "é\0"], pyrt.InvalidArgument, r"command\[1\] contains a NUL byte"),
        (["sh", "\udcff"], pyrt.InvalidOption, r"command\[1\] is not valid UTF-8"),
        ([], pyrt.InvalidOption, "command must not be empty"),
    ],
)
def test_arguments_refused(value: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        checks.args(value, "command")


def test_no_arguments_where_none_are_needed() -> None:
    assert checks.args((), "cap_add", empty_ok=True) == []
    assert checks.names([], "aliases") == []
