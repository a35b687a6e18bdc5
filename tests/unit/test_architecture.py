"""The layering rules of the README's architecture section, checked on the source itself.

Imports are read with `ast`: module level, inside functions, and in `if TYPE_CHECKING:` blocks too — a
cycle that only type hints close is still two layers that know each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "tierscale"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != me}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {m: imports_of(p, modules) for m, p in files.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            # A package's __init__ importing its own submodules is how packages re-export: not a cycle
            # between the layers, but a submodule importing its package's __init__ back would be.
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (cycle := dfs(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := dfs(m)):
            return cycle
    return None


def test_no_import_cycle_in_src() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Each layer, and what it may not import (README, Architecture).
FORBIDDEN = {
    "tierscale.policy": (
        "tierscale.config",
        "tierscale.providers",
        "tierscale.balancer",
        "tierscale.metrics",
        "tierscale.controller",
        "tierscale.api",
        "tierscale.simulate",
        "tierscale.cli",
    ),
    "tierscale.config": (
        "tierscale.providers",
        "tierscale.balancer",
        "tierscale.metrics",
        "tierscale.controller",
        "tierscale.api",
        "tierscale.simulate",
        "tierscale.cli",
    ),
    "tierscale.providers": ("tierscale.controller", "tierscale.api", "tierscale.simulate", "tierscale.cli"),
    "tierscale.balancer": ("tierscale.controller", "tierscale.api", "tierscale.simulate", "tierscale.cli"),
    "tierscale.metrics": ("tierscale.controller", "tierscale.api", "tierscale.simulate", "tierscale.cli"),
    # The lease store knows nothing of groups or tiers: only the controller uses it.
    "tierscale.coordination": (
        "tierscale.config",
        "tierscale.providers",
        "tierscale.balancer",
        "tierscale.controller",
        "tierscale.api",
        "tierscale.simulate",
        "tierscale.cli",
    ),
    "tierscale.controller": ("tierscale.api", "tierscale.cli", "tierscale.service", "tierscale.simulate"),
    "tierscale.simulate": (
        "tierscale.coordination",
        "tierscale.controller",
        "tierscale.providers",
        "tierscale.balancer",
        "tierscale.api",
        "tierscale.metrics",
    ),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_dependencies_point_one_way(layer: str) -> None:
    g = graph()
    wrong = sorted(
        f"{m} imports {n}"
        for m, deps in g.items()
        if m == layer or m.startswith(layer + ".")
        for n in deps
        if any(n == f or n.startswith(f + ".") for f in FORBIDDEN[layer])
    )
    assert not wrong, "\n".join(wrong)


def test_controller_modules_stay_small() -> None:
    long = {
        p.name: n for p in (PKG / "controller").glob("*.py") if (n := len(p.read_text().splitlines())) > 350
    }
    assert not long, f"controller modules over 350 lines: {long}"
