"""Architecture checks over the source of `harness` and `grader_sandbox`, read statically
(nothing is imported):

- no import cycle among their modules. The graph has an edge A -> B for every import of B
  that runs when A is imported: statements at module level (also inside module-level `if`,
  `try`, `with` and class bodies), not inside functions, and not under `if TYPE_CHECKING:`.
  Relative imports are resolved. `import a.b` and `from a import b` (b a module) count as an
  edge to `a.b`; `from a.b import name` as an edge to `a.b`. The implicit import of a parent
  package (`a` when `a.b` is imported) is not an edge: every package that re-exports its
  modules would otherwise be a cycle;
- no source file over MAX_LINES lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "grader_sandbox")
MAX_LINES = 600
TRY = (ast.Try, *([ast.TryStar] if hasattr(ast, "TryStar") else []))  # TryStar: 3.11+


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} for every .py file of `packages` under `root`."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when a module with this body is imported."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out += _module_level_imports(node.body)
            out += _module_level_imports(node.orelse)
        elif isinstance(node, TRY):
            out += _module_level_imports(node.body)
            for handler in node.handlers:
                out += _module_level_imports(handler.body)
            out += _module_level_imports(node.orelse)
            out += _module_level_imports(node.finalbody)
        elif isinstance(node, ast.With | ast.AsyncWith | ast.ClassDef | ast.For | ast.While):
            out += _module_level_imports(node.body)
            out += _module_level_imports(getattr(node, "orelse", []))
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name`, or its longest prefix that is one of `modules` (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            for target in targets:
                known = _known(target, modules)
                if known is not None and known != mod:
                    graph[mod].add(known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_the_checker_sees_module_level_cycles_only(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import A\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nA = 1\n"
                              "if TYPE_CHECKING:\n    from pkg import b\n"
                              "def f():\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("from .a import A\nB = 2\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("try:\n    from .. import d\nexcept ImportError:\n"
                                      "    pass\n")
    (pkg / "d.py").write_text("class K:\n    import pkg.sub.c\n")
    modules = module_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set(), "pkg.b": {"pkg.a"}, "pkg.sub": set(),
                     "pkg.sub.c": {"pkg", "pkg.d"}, "pkg.d": {"pkg.sub.c"}}
    assert find_cycle(graph) == ["pkg.d", "pkg.sub.c", "pkg.d"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_no_import_cycles() -> None:
    modules = module_files(ROOT, PACKAGES)
    assert {"harness", "harness.executors.local", "grader_sandbox"} <= set(modules)
    cycle = find_cycle(import_graph(modules))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_source_file_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in module_files(ROOT, PACKAGES).values()}
    over = {f: n for f, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"source files over {MAX_LINES} lines: {over}"


def test_reading_specs_imports_no_heavy_library() -> None:
    """`harness list`, `plan`, `validate`, `spec-schema` and `components` load every registry
    but none of torch, transformers, scipy, DeepSpeed... (harness.lazy): they answer in well
    under a second instead of 5-10."""
    import subprocess
    import sys

    from harness.lazy import HEAVY

    code = (
        "import contextlib, io, sys\n"
        "from harness.cli import main\n"
        "for args in (['list'], ['validate', 'tiny-smoke', 'qwen7b-grpo', 'tiny-study'],\n"
        "             ['plan', 'qwen7b-controllers'], ['spec-schema'], ['components']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(args) == 0, args\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]", f"imported: {r.stdout.strip()}"


def test_lazy_module_imports_on_first_use() -> None:
    import sys

    from harness.lazy import lazy_module

    name = "xml.dom.minidom"
    sys.modules.pop(name, None)
    mod = lazy_module(name)
    assert name not in sys.modules and "not imported yet" in repr(mod)
    assert mod.parseString("<a/>").documentElement.tagName == "a"
    assert name in sys.modules and mod.Node is sys.modules[name].Node
