"""The pure parts of the builder: Containerfile syntax, substitution, words, .dockerignore."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyrt
from pyrt.imagebuild import ignore, parser


def parse(text: str) -> list[parser.Instruction]:
    return parser.parse(text, "Containerfile")


def test_continuations_comments_and_lines() -> None:
    ins = parse(
        "# a comment\n"
        "FROM base AS b\n"
        "\n"
        "RUN echo one \\\n"
        "  # a comment inside is dropped\n"
        "    two \\\n"
        "\n"
        "    three\n"
        "env A=1\n"
    )
    assert [(i.keyword, i.line) for i in ins] == [("FROM", 2), ("RUN", 4), ("ENV", 9)]
    assert ins[1].args.split() == ["echo", "one", "two", "three"]
    assert ins[1].text == "RUN echo one \\"


def test_escape_directive_and_flags() -> None:
    ins = parse("# escape=`\nFROM base\nCOPY --chown=1:2 --from=b a `\n  c:\\dir\\\n")
    assert ins[1].flags == {"chown": "1:2", "from": "b"}
    assert ins[1].args.split() == ["a", "c:\\dir\\"]
    with pytest.raises(pyrt.BuildError, match=r"Containerfile:1: escape directive"):
        parse("# escape=x\nFROM base\n")
    # A directive after the first instruction is a comment.
    assert len(parse("FROM base\n# escape=`\nRUN a `\n")) == 2


def test_exec_and_shell_forms() -> None:
    run = parse('FROM b\nRUN ["echo", "a b"]\nRUN [not json\nCMD ["x", 1]\n')
    assert run[1].exec_form() == ["echo", "a b"]
    assert run[2].exec_form() is None  # Docker's rule: invalid JSON is the shell form
    assert run[3].exec_form() is None  # not all strings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM b\nONBUILD RUN x\n", r":2: ONBUILD RUN x: ONBUILD triggers are not supported"),
        ("FROM b\nMAINTAINER me\n", r":2: .*MAINTAINER is deprecated"),
        ("FROM b\nFOO bar\n", r":2: FOO bar: unknown instruction 'FOO'"),
        ("FROM b\nRUN <<EOF\nx\nEOF\n", r":2: .*heredocs"),
        ("FROM b\nCOPY --Chown=x a b\n", r":2: .*malformed flag"),
        ("FROM b\nCOPY --from=a --from=b x y\n", r":2: .*given twice"),
    ],
)
def test_refused_instructions_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(pyrt.BuildError, match=message) as e:
        parse(text)
    assert e.value.file == "Containerfile" and e.value.line == 2


def test_expand() -> None:
    env = {"A": "x", "E": ""}
    assert parser.expand("$A ${A} ${A}y", env) == "x x xy"
    assert parser.expand("${B:-dflt} ${E:-dflt} ${A:-dflt}", env) == "dflt dflt x"
    assert parser.expand("${A:+alt} ${B:+alt}", env) == "alt "
    assert parser.expand("\\$A $ $1", env) == "$A $ $1"
    with pytest.raises(ValueError, match="missing"):
        parser.expand("${A", env)
    with pytest.raises(ValueError, match="bad substitution"):
        parser.expand("${A?x}", env)


def test_expand_bounds_what_a_line_grows_to() -> None:
    """A substitution beyond MAX_EXPANDED is a ValueError (the builder names the line); a
    line of dollar signs, none of them a variable, comes back as it was (and in linear time:
    each was once a slice of the rest of the line)."""
    big = "x" * (parser.MAX_EXPANDED // 2 + 1)
    assert parser.expand("$A", {"A": big}) == big
    with pytest.raises(ValueError, match="expands to more than"):
        parser.expand("$A$A", {"A": big})
    with pytest.raises(ValueError, match="expands to more than"):
        parser.expand("${A:-$B}${A:-$B}", {"B": big})
    dollars = "$ $1 $" * 100_000
    assert parser.expand(dollars, {}) == dollars
    parser.bounded({"A": "x" * 1000}, "environment")
    with pytest.raises(ValueError, match="environment would hold more than 2 MiB"):
        parser.bounded({f"V{i}": "x" * 100_000 for i in range(30)}, "environment")


def test_words_and_pairs() -> None:
    assert parser.words('a \'b c\' "d \\" e" f\\ g') == ["a", "b c", 'd " e', "f g"]
    assert parser.words("''") == [""]
    with pytest.raises(ValueError, match="unterminated"):
        parser.words("'a")
    assert parser.pairs('A=1 B="two words" C=', "ENV") == [("A", "1"), ("B", "two words"),
                                                          ("C", "")]  # fmt: skip
    assert parser.pairs("NAME the old form", "ENV") == [("NAME", "the old form")]
    with pytest.raises(ValueError, match="not key=value"):
        parser.pairs("A=1 B", "LABEL")


@given(st.text(max_size=200))
def test_parser_never_fails_unexpectedly(text: str) -> None:
    """Any text is instructions or a BuildError naming the file, never anything else."""
    try:
        for ins in parse(text):
            ins.exec_form()
    except pyrt.BuildError as e:
        assert e.file == "Containerfile"


@given(st.text(max_size=100))
def test_expand_and_words_errors_are_value_errors(text: str) -> None:
    for f in (lambda: parser.expand(text, {"A": "1"}), lambda: parser.words(text)):
        with contextlib.suppress(ValueError):
            f()


def test_dockerignore_rules() -> None:
    ig = ignore.Ignore(
        ignore.parse("# comment\n*.log\n/build\n**/tmp\ndocs/*.md\n!docs/keep.md\n\n")
    )
    assert ig.excluded("a.log") and not ig.excluded("dir/a.log")  # * stays in one segment
    assert ig.excluded("build") and ig.excluded("build/x/y")  # a directory takes its contents
    assert ig.excluded("tmp") and ig.excluded("a/b/tmp/c")
    assert ig.excluded("docs/x.md") and not ig.excluded("docs/keep.md")
    assert not ig.excluded("docs") and not ig.excluded("src/main.py")
    assert ig.may_hold_included("docs")
    # The last pattern that matches decides.
    again = ignore.Ignore(ignore.parse("!a.txt\n*.txt\n"))
    assert again.excluded("a.txt")
    chars = ignore.Ignore(ignore.parse("file[0-9].txt\nx?z\n"))
    assert chars.excluded("file3.txt") and not chars.excluded("fileA.txt")
    assert chars.excluded("xyz") and not chars.excluded("x/z")
