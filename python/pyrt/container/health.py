"""Healthchecks: ``pyrt.Healthcheck``, Docker's HEALTHCHECK of an image, and the checker that
runs one against a started container.

The checker is a thread per container that has a check, exec'ing the test inside it every
``interval`` seconds, as Docker does: ``starting`` until a check passes, ``healthy`` after one
passes, ``unhealthy`` after ``retries`` failures in a row (those during ``start_period`` do not
count). A thread, not a loop in ``wait_for_healthy``, so that ``health`` tells the state to any
caller at any time, as ``docker inspect`` does."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from pyrt.config.checks import show
from pyrt.errors import InvalidOption, PyrtError

#: What ``Healthcheck.test`` starts with: Docker's three forms.
FORMS = ("CMD", "CMD-SHELL", "NONE")


def _seconds(value: object, what: str, least: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Healthcheck {what} must be a number of seconds, not {show(value)}")
    try:
        v = float(value)
    except OverflowError:  # an int past what a float holds: past a year too
        v = math.inf
    if not math.isfinite(v) or v < least or v > 86400 * 365:
        raise InvalidOption(f"Healthcheck {what}={value!r}: must be between {least} s and a year")
    return v


@dataclass(frozen=True)
class Healthcheck:
    """A container's healthcheck: ``Healthcheck(["CMD", "test", "-f", "/ready"])``, or
    ``["CMD-SHELL", "a shell command"]``, or ``["NONE"]`` to disable the image's."""

    test: Sequence[str]
    interval: float = 0.05
    timeout: float = 5.0
    retries: int = 3
    start_period: float = 0.0

    def __post_init__(self) -> None:
        test = self.test
        if isinstance(test, str) or not isinstance(test, Sequence):
            raise TypeError(f"Healthcheck test must be a list of str, not {show(test)}")
        if not all(isinstance(t, str) for t in test):
            raise TypeError(f"Healthcheck test must be a list of str, not {show(list(test))}")
        if not test or test[0] not in FORMS:
            raise InvalidOption(
                f"Healthcheck test={list(test)!r}: must start with 'CMD', 'CMD-SHELL' or 'NONE'"
            )
        if test[0] != "NONE" and len(test) < 2:
            raise InvalidOption(f"Healthcheck test={list(test)!r}: no command after {test[0]}")
        if test[0] == "CMD-SHELL" and len(test) != 2:
            raise InvalidOption(f"Healthcheck test={list(test)!r}: CMD-SHELL takes one string")
        if any("\0" in t for t in test):
            raise InvalidOption("Healthcheck test: NUL in an argument")
        object.__setattr__(self, "test", tuple(test))
        object.__setattr__(self, "interval", _seconds(self.interval, "interval", 0.001))
        object.__setattr__(self, "timeout", _seconds(self.timeout, "timeout", 0.001))
        object.__setattr__(self, "start_period", _seconds(self.start_period, "start_period"))
        r = self.retries
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"Healthcheck retries must be a whole number, not {show(r)}")
        if not 1 <= r <= 1 << 20:
            raise InvalidOption(f"Healthcheck retries={r!r}: must be at least 1")

    @property
    def disabled(self) -> bool:
        return self.test[0] == "NONE"

    def command(self) -> list[str]:
        """What to exec: CMD's arguments, or CMD-SHELL's string run by /bin/sh -c."""
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", self.test[1]]
        return list(self.test[1:])

    @classmethod
    def from_image(cls, doc: Optional[Mapping[str, Any]]) -> Optional[Healthcheck]:
        """The image's HEALTHCHECK (Docker's config object, durations in nanoseconds); a
        duration the image leaves at 0 takes this class's default. None when it has none or
        it cannot be read (a check that cannot be run is no check)."""
        if not doc or not doc.get("Test"):
            return None
        d = cls(["NONE"])

        def secs(key: str, default: float) -> float:
            ns = doc.get(key)
            return (
                ns / 1e9 if isinstance(ns, int) and not isinstance(ns, bool) and ns > 0 else default
            )

        try:
            return cls(
                list(doc["Test"]),
                interval=secs("Interval", d.interval),
                timeout=secs("Timeout", d.timeout),
                retries=r if isinstance(r := doc.get("Retries"), int) and r > 0 else d.retries,
                start_period=secs("StartPeriod", d.start_period),
            )
        except (TypeError, ValueError, PyrtError, OverflowError):  # (10**400 ns: no float)
            return None


class Checker:
    """Runs ``check`` on a thread until ``stop``; ``status`` is the container's health.
    ``run_check(argv, timeout)`` execs inside and returns the exit status (raising
    ``PyrtError`` once the container is gone); ``alive()`` says whether it still runs;
    ``noted(status)`` is told each change; nothing is checked while ``paused()``."""

    def __init__(
        self,
        check: Healthcheck,
        run_check: Callable[[list[str], float], int],
        alive: Callable[[], bool],
        noted: Callable[[str], None] = lambda _status: None,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self.check = check
        self._noted = noted
        self._paused = paused
        self.status = "starting"
        self.last_output = ""
        self._run = run_check
        self._alive = alive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pyrt-health", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        started = time.monotonic()
        failures = 0
        argv = self.check.command()
        while not self._stop.is_set() and self._alive():
            if self._paused():  # as Docker: no checks while paused
                self._stop.wait(self.check.interval)
                continue
            try:
                ok = self._run(argv, self.check.timeout) == 0
            except PyrtError as e:
                if self._stop.is_set() or not self._alive():
                    return
                ok, self.last_output = False, str(e)
            before = self.status
            if ok:
                self.status, failures = "healthy", 0
            elif time.monotonic() - started >= self.check.start_period:
                failures += 1
                if failures >= self.check.retries:
                    self.status = "unhealthy"
            if self.status != before:
                self._noted(self.status)
            self._stop.wait(self.check.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(self.check.timeout + 5)
