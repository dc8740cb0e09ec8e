"""``ports=`` values, checked before anything exists: a wrong type is a TypeError, a value out
of range an InvalidOption (a ValueError), each naming ``ports``; a bool is not a port."""

from __future__ import annotations

from typing import Any

import pytest

import pyrt
from pyrt.network.private import parse_ports


def test_the_forms_a_host_port_takes() -> None:
    got = parse_ports({8080: None, "53/udp": 5353, 9000: "9001", 9100: "127.0.0.2:9101",
                       9200: ("127.0.0.1", 0)})  # fmt: skip
    assert got == [(8080, "tcp", "127.0.0.1", 0), (53, "udp", "127.0.0.1", 5353),
                   (9000, "tcp", "127.0.0.1", 9001), (9100, "tcp", "127.0.0.2", 9101),
                   (9200, "tcp", "127.0.0.1", 0)]  # fmt: skip


WRONG_TYPES = [True, False, 1.5, [80], {"a": 1}, ("127.0.0.1",), ("127.0.0.1", "80"), (1, 80),
               ("127.0.0.1", True), b"80"]  # fmt: skip


@pytest.mark.parametrize("value", WRONG_TYPES)
def test_a_host_port_of_the_wrong_type_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="ports"):
        parse_ports({8080: value})


@pytest.mark.parametrize("value", [-1, 65536, 70000, "x", "1.2.3.4:", "1.2.3.4:99999",
                                   "host:80", ("::1", 80), ("300.1.1.1", 80)])  # fmt: skip
def test_a_host_port_out_of_range_is_an_invalid_option(value: Any) -> None:
    with pytest.raises(pyrt.InvalidOption, match="ports"):
        parse_ports({8080: value})


def test_ports_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="ports must be a dict"):
        parse_ports([(8080, None)])  # type: ignore[arg-type]
