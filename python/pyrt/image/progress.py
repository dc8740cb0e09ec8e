"""Progress bars for pulls and unpacking: tqdm's, on stderr, only when that is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Optional


class Progress:
    """A byte-counting bar; ``update(n)`` is safe to call when no bar is shown."""

    def __init__(self, what: str, total: int, enabled: Optional[bool] = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(
                total=total or None,
                desc=what if len(what) <= 40 else "…" + what[-39:],
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                leave=False,
                file=sys.stderr,
            )

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        t: Optional[type[BaseException]],
        e: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._bar is not None:
            self._bar.close()
