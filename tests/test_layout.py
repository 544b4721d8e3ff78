"""The package layout rules: no import circles (type-only imports included), no module over
600 lines, and an MB-MPO core that names no research extension."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mbmpo", "dynamics", "policies")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports at module level or under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in tree.body:
        for n in node.body if isinstance(node, ast.If) else [node]:
            if isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    prefix = package[: len(package) - (n.level - 1)]
                    base = ".".join(prefix + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in n.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: imports(p, name, set(paths)) for name, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, leaving out a package importing its own submodules (``__init__`` re-exports)."""
    def related(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in stack:
                cyc = stack[stack.index(dep):]
                if not any(related(a, b) for a in cyc for b in cyc if a != b):
                    found.append(cyc)
            elif dep not in done:
                visit(dep, [*stack, dep])
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return found


def test_the_cycle_finder_finds_a_type_only_circle():
    graph = {"a.x": {"a.y"}, "a.y": {"a.x"}, "a": {"a.x"}, "a.z": set()}
    assert cycles(graph) == [["a.x", "a.y"]]
    assert cycles({"a": {"a.x"}, "a.x": {"a"}}) == []  # a package and its own submodule


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def test_the_mbmpo_core_names_no_extension():
    core = (ROOT / "mbmpo" / "mbmpo" / "algorithm.py").read_text()
    assert len(core.splitlines()) <= 460
    for word in ("terminal_value", "fall_hazard", "focus_starts", "uncertainty_penalty", "model_penalty"):
        assert word not in core, word
