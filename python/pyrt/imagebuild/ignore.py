""".dockerignore: which paths of the build context are left out.

Docker's rules: one pattern per line, ``#`` comments, Go's ``filepath.Match`` syntax per path
segment plus ``**`` for any number of segments, ``!`` to take a path back in; the last pattern
that matches decides. A pattern that matches a directory leaves out everything under it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    exclude: bool
    #: Literal leading segments (for knowing that a directory may hold exceptions).
    text: str


def translate(pattern: str) -> str:
    """A .dockerignore pattern (Go's filepath.Match with "**") as a regular expression."""
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern[i : i + 2] == "**":
                i += 2
                if pattern[i : i + 1] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise ValueError(f"unterminated [ in {pattern!r}")
            body = pattern[i + 1 : end]
            if body.startswith("^") or body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def parse(text: str) -> list[Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        if not exclude:
            line = line[1:].strip()
        line = posixpath.normpath(line.lstrip("/")) if line.lstrip("/") else "."
        if line == ".":
            continue
        rules.append(Rule(re.compile(translate(line) + r"\Z", re.S), exclude, line))
    return rules


class Ignore:
    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.has_exceptions = any(not r.exclude for r in rules)

    def excluded(self, rel: str) -> bool:
        """Whether the context path ``rel`` ("a/b", no leading slash) is left out: it, or a
        directory above it, matches the last pattern that applies."""
        if not self.rules or rel in ("", "."):
            return False
        parts = rel.split("/")
        prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
        verdict = False
        for r in self.rules:
            if any(r.regex.match(p) for p in prefixes):
                verdict = r.exclude
        return verdict

    def may_hold_included(self, rel: str) -> bool:
        """Whether an excluded directory may still hold a path a ``!`` pattern takes back."""
        if not self.has_exceptions:
            return False
        return any(not r.exclude and (r.text.startswith(rel + "/") or "*" in r.text)
                   for r in self.rules)  # fmt: skip
