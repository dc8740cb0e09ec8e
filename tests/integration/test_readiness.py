"""Readiness: wait_for_http (inside the namespace and through a published port), healthchecks
(given, the image's HEALTHCHECK by default, disabled with NONE) with `health` and
wait_for_healthy; each wait succeeds, times out with TimeoutExpired leaving the container
running, or fails at once with ContainerError when the container exits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from imagetools import busybox_layer, make_layout

import pyrt

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="enters the namespace as root")
needs_slirp = pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="needs slirp4netns")

LATE_SERVER = (
    "mkdir -p /www/ok; echo up > /www/ok/index.html; sleep 0.3; exec httpd -f -p 8080 -h /www"
)


@needs_root
def test_wait_for_http_inside_the_namespace(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", LATE_SERVER]) as c:
        c.wait_for_http(8080, "/ok/", timeout=10)
        c.wait_for_http(8080, "/missing", status=404, timeout=10)
        with pytest.raises(pyrt.TimeoutExpired, match=r"for HTTP 200 from port 8080 /missing"):
            c.wait_for_http(8080, "/missing", timeout=0.3)
        assert c.status == "running"


@needs_slirp
def test_wait_for_http_through_a_published_port(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", LATE_SERVER], ports={8080: None}) as c:
        c.wait_for_http(8080, "/ok/index.html", timeout=10)


def test_wait_for_http_fails_at_once_when_the_container_exits(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", "sleep 0.2; exit 3"], ports={8080: None}) as c:
        t0 = time.monotonic()
        with pytest.raises(pyrt.ContainerError, match="status 3 while waiting for HTTP") as e:
            c.wait_for_http(8080, timeout=60)
        assert e.value.returncode == 3
        assert time.monotonic() - t0 < 30  # not the 60 s of the timeout


@needs_root
def test_wait_for_http_is_not_held_by_a_server_that_drips_its_headers(image: pyrt.Image) -> None:
    """A server that answers a byte every 0.2 s and never ends its headers: each probe is cut
    off after its 2 s, and the wait times out as asked (before, the first probe waited for
    ever, and a cut probe took the headers' end of stream for a 200)."""
    drip = (
        "while :; do (printf 'HTTP/1.1 200 OK\\r\\nX-Slow: '; "
        "while :; do printf a; sleep 0.2; done) | nc -l -p 8080; done"
    )
    with pyrt.Container(image, ["sh", "-c", drip]) as c:
        with pytest.raises(pyrt.TimeoutExpired, match=r"for HTTP 200 from port 8080 /"):
            c.wait_for_http(8080, timeout=1)
        assert c.status == "running"


def test_wait_for_http_refuses_bad_arguments(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "30"]) as c:
        with pytest.raises(TypeError, match="port"):
            c.wait_for_http("80")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="path"):
            c.wait_for_http(80, "no-slash")
        with pytest.raises(ValueError, match="status"):
            c.wait_for_http(80, status=99)
        with pytest.raises(ValueError, match="timeout"):
            c.wait_for_http(80, timeout=-1)


def test_healthcheck_goes_from_starting_to_healthy(image: pyrt.Image) -> None:
    hc = pyrt.Healthcheck(["CMD", "test", "-f", "/tmp/ready"], interval=0.05)
    with pyrt.Container(image, ["sh", "-c", "sleep 0.5; touch /tmp/ready; sleep 30"],
                        healthcheck=hc) as c:  # fmt: skip
        assert c.health == "starting"
        c.wait_for_healthy(timeout=20)
        assert c.health == "healthy"


def test_healthcheck_turns_unhealthy_after_retries(image: pyrt.Image) -> None:
    hc = pyrt.Healthcheck(["CMD-SHELL", "test -f /tmp/ready"], interval=0.02, retries=2)
    with pyrt.Container(image, ["sh", "-c", "touch /tmp/ready; sleep 30"], healthcheck=hc) as c:
        c.wait_for_healthy(timeout=20)
        c.exec(["rm", "/tmp/ready"])
        deadline = time.monotonic() + 20
        while c.health != "unhealthy" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.health == "unhealthy"
        with pytest.raises(pyrt.TimeoutExpired, match="for the healthcheck to pass"):
            c.wait_for_healthy(timeout=0.2)
        assert c.status == "running"


CHATTY_CHECK = """
import sys, pyrt
hc = pyrt.Healthcheck(["CMD-SHELL", "head -c 800000000 /dev/zero"], interval=0.05, timeout=60)
with pyrt.Container(pyrt.Image.load(sys.argv[1]), ["sleep", "60"], healthcheck=hc) as c:
    c.wait_for_healthy(timeout=120)
# The peak of this process's own memory (not ru_maxrss: that starts from the parent's peak,
# which the exec of this interpreter records).
print(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
"""


def test_a_chatty_healthcheck_costs_the_owner_no_memory(rootfs: Path) -> None:
    """A check that writes 800 MB passes without its output being kept (before, each check's
    output was captured, in the owner's memory, and thrown away)."""
    out = subprocess.run([sys.executable, "-c", CHATTY_CHECK, str(rootfs)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 300 << 10, out.stdout  # KiB: far below the 800 MB written


def test_wait_for_healthy_fails_at_once_when_the_container_exits(image: pyrt.Image) -> None:
    hc = pyrt.Healthcheck(["CMD", "false"], interval=0.05)
    with pyrt.Container(image, ["sh", "-c", "sleep 0.3; exit 7"], healthcheck=hc) as c:
        with pytest.raises(pyrt.ContainerError) as e:
            c.wait_for_healthy(timeout=60)
        assert e.value.returncode == 7


def test_the_images_healthcheck_is_the_default(rootfs: Path, tmp_path: Path) -> None:
    config = {
        "Cmd": ["sh", "-c", "sleep 0.3; touch /tmp/up; sleep 30"],
        "Healthcheck": {
            "Test": ["CMD-SHELL", "test -f /tmp/up"],
            "Interval": 50_000_000,
            "Retries": 3,
        },
    }
    img = pyrt.Image.load(make_layout(tmp_path / "layout", [busybox_layer(rootfs)], config=config))
    assert img.config.healthcheck is not None
    with pyrt.Container(img) as c:
        assert c.health == "starting"
        c.wait_for_healthy(timeout=20)
    with pyrt.Container(img, healthcheck=pyrt.Healthcheck(["NONE"])) as c:
        assert c.health is None
        with pytest.raises(pyrt.PyrtError, match="no healthcheck"):
            c.wait_for_healthy(timeout=1)
    # The check survives a commit.
    with pyrt.Container(img) as c:
        assert c.commit().config.healthcheck == img.config.healthcheck


def test_healthcheck_refuses_bad_values() -> None:
    with pytest.raises(TypeError, match="test"):
        pyrt.Healthcheck("test -f /x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CMD"):
        pyrt.Healthcheck(["test", "-f", "/x"])
    with pytest.raises(ValueError, match="interval"):
        pyrt.Healthcheck(["CMD", "true"], interval=0)
    with pytest.raises(ValueError, match="timeout"):
        pyrt.Healthcheck(["CMD", "true"], timeout=float("nan"))
    with pytest.raises(ValueError, match="retries"):
        pyrt.Healthcheck(["CMD", "true"], retries=0)
    with pytest.raises(TypeError, match="healthcheck"):
        pyrt.Container(pyrt.Image.host(), ["true"], healthcheck=["CMD", "true"])  # type: ignore[arg-type]
