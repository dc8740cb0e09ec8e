"""Containerfile syntax: parser directives, comments, line continuations, instructions with
their ``--flags``, the exec (JSON) and shell forms, and ``$VAR`` substitution.

This module knows the text only; what an instruction does is ``steps``'s business. Every
error names the file and line (:class:`BuildError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

from pyrt.errors import BuildError

#: Instructions pyrt builds; anything else is refused naming its line.
KNOWN = frozenset(
    {
        "FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "ENTRYPOINT", "CMD",
        "EXPOSE", "LABEL", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "VOLUME",
    }
)  # fmt: skip
#: Instructions Docker has that pyrt refuses, with the reason shown.
REFUSED = {
    "ONBUILD": "ONBUILD triggers are not supported",
    "MAINTAINER": "MAINTAINER is deprecated and not supported; use LABEL maintainer=...",
}
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
_FLAG = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(.*))?$")


@dataclass(frozen=True)
class Instruction:
    file: str
    line: int
    keyword: str
    #: The arguments after the flags, continuations joined, not yet substituted.
    args: str
    flags: Mapping[str, str] = field(default_factory=dict)
    #: The text as written (first line), for messages and history.
    text: str = ""

    def error(self, message: str, output: Optional[bytes] = None) -> BuildError:
        return BuildError(message, self.file, self.line, self.text, output=output)

    def exec_form(self) -> Optional[list[str]]:
        """The arguments as a JSON array of strings (the exec form), or None (shell form)."""
        s = self.args.strip()
        if not s.startswith("["):
            return None
        try:
            v = json.loads(s)
        except ValueError:
            return None  # Docker's rule: not valid JSON is the shell form
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            return None
        return v


def parse(text: str, file: str) -> list[Instruction]:
    """The instructions of a Containerfile, in order."""
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # Parser directives: only at the very top, before any comment, blank line or instruction.
    while i < len(lines):
        m = _DIRECTIVE.match(lines[i])
        if not m:
            break
        name, value = m.group(1).lower(), m.group(2)
        if name == "escape":
            if value not in ("\\", "`"):
                raise BuildError(f"escape directive must be \\ or `, not {value!r}", file, i + 1)
            escape = value
        elif name not in ("syntax", "check"):
            break  # an unknown directive is a comment, and ends the directives
        i += 1
    out: list[Instruction] = []
    while i < len(lines):
        raw = lines[i]
        start = i
        i += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = [raw]
        # A line ending with the escape character goes on; comments and blank lines inside
        # a continued instruction are dropped, as Docker does.
        while _continues(parts[-1], escape) and i < len(lines):
            parts[-1] = parts[-1].rstrip()[:-1]
            nxt = lines[i]
            i += 1
            if nxt.strip().startswith("#") or not nxt.strip():
                parts.append(escape)  # keeps the continuation alive
                continue
            parts.append(nxt)
        if _continues(parts[-1], escape):
            parts[-1] = parts[-1].rstrip()[:-1]
        joined = "".join(p for p in parts if p != escape)
        out.append(_instruction(joined, file, start + 1, raw.strip(), escape))
    return out


def _continues(line: str, escape: str) -> bool:
    return line.rstrip().endswith(escape)


def _instruction(joined: str, file: str, line: int, first: str, escape: str) -> Instruction:
    word, _, rest = joined.strip().partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = more + " " + rest
    kw = word.upper()
    if kw in REFUSED:
        raise BuildError(REFUSED[kw], file, line, first)
    if kw not in KNOWN:
        raise BuildError(f"unknown instruction {word!r}", file, line, first)
    rest = rest.strip()
    flags: dict[str, str] = {}
    if kw in ("FROM", "RUN", "COPY", "ADD", "HEALTHCHECK"):
        while rest.startswith("--"):
            tok, _, after = rest.partition(" ")
            m = _FLAG.match(tok)
            if not m:
                raise BuildError(f"malformed flag {tok!r}", file, line, first)
            if m.group(1) in flags:
                raise BuildError(f"flag --{m.group(1)} given twice", file, line, first)
            # A bare flag (BuildKit's --link) has no value; those pyrt takes all need one.
            flags[m.group(1)] = m.group(2) or ""
            rest = after.lstrip()
    if "<<" in rest and kw in ("RUN", "COPY", "ADD") and re.search(r"<<-?[\"']?[A-Za-z]", rest):
        raise BuildError("heredocs (<<EOF) are not supported", file, line, first)
    return Instruction(file, line, kw, rest, flags, first)


# --- words and substitution --------------------------------------------------------------------


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

#: The most one word or line may expand to: a variable that doubles itself at each ENV line
#: (``ENV A=$A$A``) would otherwise fill the machine's memory in forty lines.
MAX_EXPANDED = 1 << 20


#: The most a stage's ARGs, its environment or its labels may hold in all: the kernel passes
#: a command at most this much of arguments and environment together (ARG_MAX under the
#: default 8 MiB stack), and without a bound, lines that each copy a large variable under a
#: new name would fill memory as the doubling above does.
MAX_VARIABLES = 2 << 20


def bounded(values: Mapping[str, Optional[str]], what: str) -> None:
    """ValueError when ``values`` hold more than MAX_VARIABLES characters, names included."""
    if sum(len(k) + len(v or "") + 2 for k, v in values.items()) > MAX_VARIABLES:
        raise ValueError(f"the {what} would hold more than {MAX_VARIABLES >> 20} MiB")


def expand(text: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}`` replaced from ``env``
    (unset is empty); an escaped ``\\$`` stays a literal dollar. ValueError beyond
    MAX_EXPANDED characters."""
    out: list[str] = []
    size = len(text)

    def value(v: str) -> str:
        nonlocal size
        size += len(v)
        if size > MAX_EXPANDED:
            raise ValueError(
                f"expands to more than {MAX_EXPANDED} characters (a variable that doubles itself?)"
            )
        return v

    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == escape and i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if c != "$" or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        if text[i + 1] == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise ValueError(f"missing '}}' in {text!r}")
            body = text[i + 2 : end]
            name, op, word = body, "", ""
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(:[-+])?(.*)$", body, re.S)
            if not m or (m.group(3) and not m.group(2)):
                raise ValueError(f"bad substitution ${{{body}}}")
            name, op, word = m.group(1), m.group(2) or "", m.group(3)
            val = env.get(name)
            if op == ":-":
                out.append(value(val if val else expand(word, env, escape)))
            elif op == ":+":
                out.append(value(expand(word, env, escape) if val else ""))
            else:
                out.append(value(val or ""))
            i = end + 1
            continue
        m = _NAME.match(text, i + 1)  # (at a position: a slice per "$" was quadratic)
        if not m:
            out.append("$")
            i += 1
            continue
        out.append(value(env.get(m.group(0), "")))
        i += 1 + len(m.group(0))
    return "".join(out)


def words(text: str, escape: str = "\\") -> list[str]:
    """Whitespace-separated words with shell-like quoting ('...' literal, "..." with escapes)."""
    out: list[str] = []
    cur: list[str] = []
    have = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == escape and quote == '"' and i + 1 < len(text):
                i += 1
                cur.append(text[i])
            else:
                cur.append(c)
        elif c in "'\"":
            quote, have = c, True
        elif c == escape and i + 1 < len(text):
            i += 1
            cur.append(text[i])
            have = True
        elif c.isspace():
            if cur or have:
                out.append("".join(cur))
            cur, have = [], False
        else:
            cur.append(c)
            have = True
        i += 1
    if quote:
        raise ValueError(f"unterminated quote in {text!r}")
    if cur or have:
        out.append("".join(cur))
    return out


def pairs(text: str, keyword: str) -> list[tuple[str, str]]:
    """The ``key=value`` pairs of ENV and LABEL; ENV's old ``ENV key value...`` form too."""
    ws = words(text)
    if not ws:
        raise ValueError(f"{keyword} needs at least one argument")
    if "=" not in ws[0] and keyword == "ENV":
        _, _, rest = text.strip().partition(" ")
        if not rest.strip():
            raise ValueError("ENV needs a value (ENV key=value)")
        return [(ws[0], " ".join(words(rest)))]
    out = []
    for w in ws:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise ValueError(f"{keyword}: {w!r} is not key=value")
        out.append((k, v))
    return out
