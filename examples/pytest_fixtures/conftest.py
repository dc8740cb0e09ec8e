"""Fixtures built on pyrt's: a session-wide server, and a fixture that builds on another.
docs/pytest.md walks through this file; tests/integration/test_pytest_plugin.py runs it."""

import os

import pytest

import pyrt


@pytest.fixture(scope="session")
def tools_image():
    """An image for the whole session: a rootfs directory given by the environment."""
    return pyrt.Image.load(os.environ["EXAMPLE_ROOTFS"])


@pytest.fixture(scope="session")
def web_server(tools_image):
    """One web server for the whole session; tests reach it from inside its container."""
    script = (
        "mkdir -p /www && echo hello-from-httpd > /www/index.html && exec httpd -f -p 8080 -h /www"
    )
    with pyrt.Container(tools_image, ["sh", "-c", script], memory="64m") as c:
        c.wait_for_port(8080, timeout=10)
        yield c


@pytest.fixture
def client(web_server):
    """A fixture that builds on another: runs an HTTP client next to the server."""

    def get(path="/"):
        r = web_server.exec(["wget", "-qO-", f"http://127.0.0.1:8080{path}"])
        return r.stdout.decode()

    return get
