"""Input, output, exit statuses, signals, timeouts: run() as subprocess.run."""

from __future__ import annotations

import os
import signal
import time

import pytest

import pyrt


def test_stdin_reaches_the_command(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["sh", "-c", "cat; echo; cat /proc/self/fd/0 | wc -c"], input=b"hello")
    assert r.stdout == b"hello\n0\n"
    assert pyrt.run(image, ["cat"], input="text in", text=True).stdout == "text in"


def test_without_input_stdin_is_empty(image: pyrt.Image) -> None:
    assert pyrt.run(image, ["cat"], timeout=10).stdout == b""


def test_large_input(image: pyrt.Image) -> None:
    data = os.urandom(8 << 20)
    r = pyrt.run(image, ["sh", "-c", "cat | md5sum"], input=data)
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_large_outputs_on_both_streams_at_once(image: pyrt.Image) -> None:
    n = 30_000_000
    script = f"head -c {n} /dev/zero & head -c {n} /dev/zero | tr '\\0' x >&2; wait"
    r = pyrt.run(image, ["sh", "-c", script], timeout=60)
    assert len(r.stdout) == n and len(r.stderr) == n
    assert r.stderr[:3] == b"xxx" and r.stdout[:3] == b"\0\0\0"


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_exit_codes(image: pyrt.Image, code: int) -> None:
    assert pyrt.run(image, ["sh", "-c", f"exit {code}"]).returncode == code


def test_killed_by_signal_reports_minus_signum(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sleep", "60"])
    c.start()
    try:
        c.kill(signal.SIGKILL)
        assert c.wait(timeout=10) == -9
    finally:
        c.remove()


def test_signal_from_inside_a_child(image: pyrt.Image) -> None:
    # pid 1 ignores signals it has no handler for, as init does; a child process does not.
    r = pyrt.run(image, ["sh", "-c", "sh -c 'kill -TERM $$'; echo $?"])
    assert r.stdout.strip() == b"143"


def test_stderr_is_separate(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["sh", "-c", "echo out; echo err >&2"])
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")


def test_text_mode(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["echo", "héllo"], text=True)
    assert r.stdout == "héllo\n" and isinstance(r.stderr, str)


def test_check_raises_container_error(image: pyrt.Image) -> None:
    with pytest.raises(pyrt.ContainerError) as ei:
        pyrt.run(image, ["sh", "-c", "echo oops >&2; exit 4"], check=True)
    assert ei.value.returncode == 4 and ei.value.stderr == b"oops\n"
    r = pyrt.run(image, ["sh", "-c", "exit 2"])
    with pytest.raises(pyrt.ContainerError):
        r.check_returncode()
    pyrt.run(image, ["true"], check=True)


def test_timeout_kills_the_whole_container(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "sleep 100 & sleep 100 & echo started; wait"])
    t0 = time.monotonic()
    with pytest.raises(pyrt.TimeoutExpired) as ei:
        c.run(timeout=0.5)
    assert time.monotonic() - t0 < 10
    assert isinstance(ei.value, TimeoutError)
    assert ei.value.stdout == b"started\n"
    assert c.status == "removed"
    pid = c.pid
    assert pid is not None and not os.path.exists(f"/proc/{pid}")


def test_returncode_and_result_fields(image: pyrt.Image) -> None:
    r = pyrt.run(image, ["true"])
    assert r.returncode == 0 and r.oom_killed is False and r.args == ["true"]


def test_container_object_run(image: pyrt.Image) -> None:
    c = pyrt.Container(image, ["sh", "-c", "echo $X"], env={"X": "1"})
    assert c.status == "created"
    r = c.run()
    assert r.stdout == b"1\n" and c.status == "removed"
    c.remove()  # idempotent


def test_context_manager_starts_and_removes(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sh", "-c", "echo up; sleep 60"]) as c:
        assert c.status == "running"
        pid = c.pid
        assert pid is not None and os.path.exists(f"/proc/{pid}")
        deadline = time.monotonic() + 5
        while b"up" not in c.logs() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.logs() == b"up\n"
    assert c.status == "removed"
    assert not os.path.exists(f"/proc/{pid}")


def test_wait_timeout_keeps_it_running(image: pyrt.Image) -> None:
    with pyrt.Container(image, ["sleep", "60"]) as c:
        with pytest.raises(pyrt.TimeoutExpired):
            c.wait(timeout=0.1)
        assert c.status == "running"
        assert c.stop(timeout=0.2) == -9  # sleep as pid 1 ignores SIGTERM: SIGKILL follows


def test_stop_with_a_handler(image: pyrt.Image) -> None:
    with pyrt.Container(
        image, ["sh", "-c", "trap 'exit 7' TERM; echo trapped; while :; do sleep 0.05; done"]
    ) as c:
        c.wait_for_log("trapped")  # a TERM before the trap would be ignored (pid 1)
        assert c.stop(timeout=5) == 7
