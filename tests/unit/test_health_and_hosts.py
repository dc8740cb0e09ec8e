"""The pure parts of healthchecks and shared networks: an image's HEALTHCHECK read into a
pyrt.Healthcheck, what a check execs, and the /etc/hosts a network writes."""

from __future__ import annotations

import pytest

import pyrt
from pyrt.network.private import hosts_file


def test_the_images_healthcheck_in_docker_form() -> None:
    hc = pyrt.Healthcheck.from_image(
        {
            "Test": ["CMD-SHELL", "curl -f localhost"],
            "Interval": 2_000_000_000,
            "Timeout": 500_000_000,
            "StartPeriod": 0,
            "Retries": 5,
        }
    )
    assert hc is not None
    assert hc.command() == ["/bin/sh", "-c", "curl -f localhost"]
    assert (hc.interval, hc.timeout, hc.retries, hc.start_period) == (2.0, 0.5, 5, 0.0)


def test_durations_the_image_leaves_out_take_the_defaults() -> None:
    hc = pyrt.Healthcheck.from_image({"Test": ["CMD", "test", "-f", "/ok"]})
    assert hc is not None and hc.command() == ["test", "-f", "/ok"]
    d = pyrt.Healthcheck(["CMD", "true"])
    assert (hc.interval, hc.timeout, hc.retries) == (d.interval, d.timeout, d.retries)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {},
        {"Test": []},
        {"Test": ["BOGUS", "x"]},
        {"Test": "CMD true"},
        {"Test": ["CMD"]},
        {"Test": ["CMD-SHELL", "a", "b"]},
        # Durations past a float (JSON's numbers have no bound) or past a year.
        {"Test": ["CMD", "true"], "Interval": 10**400},
        {"Test": ["CMD", "true"], "StartPeriod": 10**400},
        {"Test": ["CMD", "true"], "Timeout": 2 * 365 * 86400 * 10**9},
    ],
)
def test_an_unusable_image_healthcheck_is_none(doc: object) -> None:
    assert pyrt.Healthcheck.from_image(doc) is None  # type: ignore[arg-type]


def test_none_disables() -> None:
    hc = pyrt.Healthcheck.from_image({"Test": ["NONE"]})
    assert hc is not None and hc.disabled


def test_hosts_file_lists_every_member_and_the_host() -> None:
    text = hosts_file([("10.0.2.16", ["db", "database"]), ("10.0.2.17", ["app"]),
                       ("10.0.2.18", [])])  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.0.2.16\tdb database" in lines and "10.0.2.17\tapp" in lines
    assert not any(line.startswith("10.0.2.18") for line in lines)
    assert lines[-1] == "10.0.2.2\thost.pyrt.internal"
