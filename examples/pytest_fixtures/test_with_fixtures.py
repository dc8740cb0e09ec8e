"""Tests using the example fixtures and pyrt's own."""

import pytest


def test_server_answers(client):
    assert client("/") == "hello-from-httpd\n"


def test_a_fresh_sandbox_per_test(sandbox):
    sandbox.exec(["sh", "-c", "echo scratch > /tmp/file"])
    assert sandbox.exec(["cat", "/tmp/file"]).stdout == b"scratch\n"


@pytest.mark.pyrt(env={"GREETING": "hi"}, memory="128m")
def test_marker_options(sandbox):
    assert sandbox.exec(["sh", "-c", "echo $GREETING"]).stdout == b"hi\n"


def test_untrusted_code_with_limits(pyrt_container, tools_image):
    c = pyrt_container(tools_image, ["sh", "-c", "sleep 60"], memory="32m", pids_limit=16)
    r = c.exec(["sh", "-c", "tail -c 100000000 /dev/zero"])
    assert r.returncode == -9 and c.oom_killed
