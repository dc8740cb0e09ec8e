"""Fails when a module of python/pyrt or of a Rust crate under rust/ imports itself through
others: an import circle. Run by .ci/run.

Python: every ``import`` and ``from ... import`` counts, at module level or inside a function
(an import deferred to first use is still a dependency), except under ``if TYPE_CHECKING:``.
``from . import _core`` names the extension module, not the package. Rust: every
``crate::a::b`` and ``super::x`` path outside ``#[cfg(test)]`` modules names the module it
reaches; a module's use of its own parent's items (``super::`` from a child) counts, and a
parent's declaring its children does not.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# --- Python ------------------------------------------------------------------------------------


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    walk(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            walk(child)

    walk(tree)
    return found


def _extension(top: Path, module: str) -> bool:
    """Whether ``module`` is an extension module (its stub or shared object is there)."""
    where = top.joinpath(*module.split("."))
    return where.with_suffix(".pyi").exists() or any(where.parent.glob(where.name + ".*.so"))


def python_graph(package: Path) -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for p in package.rglob("*.py"):
        parts = list(p.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = pkg
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = f"{up}.{node.module}" if node.module else up
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in mods:
                        targets.append(sub)
                    elif _extension(package.parent, sub):
                        pass  # a compiled submodule (pyrt._core): no Python imports
                    elif node.module:  # a name from a module
                        targets.append(base)
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


# --- Rust --------------------------------------------------------------------------------------

_TESTS = re.compile(r"#\[cfg\(test\)\]\s*(?:pub\s+)?mod\s+\w+\s*\{.*", re.S)
_PATH = re.compile(r"\b(crate|super)((?:::\w+)+)")


def rust_graph(src: Path) -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for p in src.rglob("*.rs"):
        parts = list(p.relative_to(src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts.pop()
        mods["::".join(parts) or "crate"] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        text = _TESTS.sub("", path.read_text())
        here = [] if mod == "crate" else mod.split("::")
        for m in _PATH.finditer(text):
            rest = m.group(2).strip(":").split("::")
            base = [] if m.group(1) == "crate" else here[:-1]
            cand = base + rest
            for k in range(len(cand), -1, -1):
                target = "::".join(cand[:k]) or "crate"
                if target in mods:
                    if target != mod:
                        graph[mod].add(target)
                    break
    # A parent reaches its children by declaring them: not an edge back.
    return graph


def main() -> int:
    problems = []
    for comp in circles(python_graph(ROOT / "python" / "pyrt")):
        problems.append("python: " + " <-> ".join(comp))
    for src in sorted(ROOT.glob("rust/*/src")):
        for comp in circles(rust_graph(src)):
            problems.append(f"{src.parent.name}: " + " <-> ".join(comp))
    for p in problems:
        print(f"import circle: {p}", file=sys.stderr)
    if not problems:
        print("no import circles in python/pyrt or rust/*/src")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
