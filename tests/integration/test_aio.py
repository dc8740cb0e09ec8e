"""The asyncio front end: the same behaviour, on one event loop, many containers at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

import pyrt


def arun(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_run_and_errors(image: pyrt.Image) -> None:
    async def main() -> None:
        r = await pyrt.aio.run(image, ["sh", "-c", "cat; echo err >&2; exit 3"], input=b"in")
        assert (r.returncode, r.stdout, r.stderr) == (3, b"in", b"err\n")
        with pytest.raises(pyrt.ContainerError):
            await pyrt.aio.run(image, ["false"], check=True)
        with pytest.raises(pyrt.SpawnError, match="/nope"):
            await pyrt.aio.run(image, ["/nope"])
        with pytest.raises(pyrt.TimeoutExpired):
            await pyrt.aio.run(image, ["sleep", "30"], timeout=0.2)

    arun(main())


def test_container_lifecycle(image: pyrt.Image) -> None:
    async def main() -> None:
        async with pyrt.aio.Container(image, ["sh", "-c", "echo up; sleep 60"], init=True) as c:
            assert c.status == "running"
            await c.wait_for_log("up", timeout=10)
            r = await c.exec(["sh", "-c", "echo $$; cat"], input="x", text=True)
            pid, echoed = r.stdout.split()
            assert echoed == "x" and int(pid) > 2  # 1 is the init, 2 the command
            with pytest.raises(pyrt.TimeoutExpired):
                await c.exec(["sleep", "30"], timeout=0.2)
            with pytest.raises(pyrt.TimeoutExpired):
                await c.wait(timeout=0.1)
            assert (await c.stats()).pids >= 2
            assert await c.stop(timeout=5) == -15
        assert c.status == "removed"

    arun(main())


def test_follow_logs_async(image: pyrt.Image) -> None:
    async def main() -> list[str]:
        script = "for i in 1 2 3; do echo tick $i; sleep 0.05; done"
        async with pyrt.aio.Container(image, ["sh", "-c", script]) as c:
            return b"".join([chunk async for chunk in c.follow_logs()]).decode().splitlines()

    assert arun(main()) == ["tick 1", "tick 2", "tick 3"]


def test_fifty_containers_concurrently_on_one_loop(image: pyrt.Image) -> None:
    threads_before = threading.active_count()

    async def one(i: int) -> str:
        async with pyrt.aio.Container(image, ["sh", "-c", f"echo ready-{i}; sleep 30"]) as c:
            await c.wait_for_log(f"ready-{i}", timeout=60)
            r = await c.exec(["echo", f"exec-{i}"], text=True)
            return str(r.stdout).strip()

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(50)))

    t0 = time.monotonic()
    assert arun(main()) == [f"exec-{i}" for i in range(50)]
    assert time.monotonic() - t0 < 120
    # The default executor's few workers for the spawns, not one thread per container.
    assert threading.active_count() - threads_before <= 10


def test_readiness_waits_async(image: pyrt.Image) -> None:
    serve = "mkdir /www; echo ok > /www/i; sleep 0.2; touch /tmp/ready; exec httpd -f -h /www"
    hc = pyrt.Healthcheck(["CMD", "test", "-f", "/tmp/ready"])

    async def main() -> None:
        async with pyrt.aio.Container(image, ["sh", "-c", serve], healthcheck=hc,
                                      ports={80: None}) as c:  # fmt: skip
            assert c.health == "starting"
            await asyncio.gather(c.wait_for_http(80, "/i", timeout=20),
                                 c.wait_for_healthy(timeout=20))  # fmt: skip
            assert c.health == "healthy" and c.ip == "10.0.2.100"
            with pytest.raises(pyrt.TimeoutExpired):
                await c.wait_for_http(80, "/missing", timeout=0.3)
        async with pyrt.aio.Container(image, ["sh", "-c", "exit 4"], healthcheck=hc) as c:
            with pytest.raises(pyrt.ContainerError) as e:
                await c.wait_for_healthy(timeout=60)
            assert e.value.returncode == 4

    arun(main())


def test_follow_logs_timeout_and_a_cancelled_exec(image: pyrt.Image) -> None:
    """The async front runs the sync one's steps: follow_logs has its timeout, and an exec
    whose task is cancelled is killed and waited for (no process of it stays inside)."""

    async def main() -> None:
        async with pyrt.aio.Container(image, ["sh", "-c", "echo up; sleep 60"]) as c:
            with pytest.raises(pyrt.TimeoutExpired):
                async for _ in c.follow_logs(timeout=0.2):
                    pass
            task = asyncio.ensure_future(c.exec(["sleep", "37"]))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            ps = await c.exec(["ps", "-o", "args"], text=True)
            assert "sleep 37" not in ps.stdout, ps.stdout
            # Cancelled while the spawn itself runs: the process it made is still reaped.
            for delay in (0, 0.001, 0.003):
                task = asyncio.ensure_future(c.exec(["sleep", "38"]))
                await asyncio.sleep(delay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            ps = await c.exec(["ps", "-o", "args"], text=True)
            assert "sleep 38" not in ps.stdout, ps.stdout

    arun(main())
