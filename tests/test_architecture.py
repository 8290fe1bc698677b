"""The house: no import circles in ``harness/``, and no import hidden inside a function to dodge one.

Imports are read with ``ast`` (nothing is imported). An import inside a function is allowed only for a
heavy or optional dependency outside the harness (auto_LiRPA, submitit, onnx, ...) or for the command
line's lazy start-up; every other harness-to-harness import sits at the top of its module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "harness"

# Modules that may import harness modules inside functions: the command line imports only what the
# command it runs needs.
LAZY_ALLOWED = {"harness.cli"}
# Modules that may be imported inside a function anywhere: the auto_LiRPA adapter, because importing
# auto_LiRPA patches torch (harness.bounds.lirpa_compat) and prints warnings, which a command that
# never bounds with auto_LiRPA must not pay for or show.
LAZY_TARGETS = {"harness.bounds.lirpa", "harness.bounds.lirpa_compat"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The harness module an import names (a ``from pkg import submodule`` names the submodule)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported harness module, at top level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    # imports under `if TYPE_CHECKING:` at the top are not executed
    for n in tree.body:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            top |= {id(x) for x in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from pkg import sub`` imports the submodule (and runs the package's __init__ first)
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        for n in names:
            if n.startswith("harness"):
                m = resolve(n, known)
                if m is not None:
                    out.append((m, id(node) in top))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    g: dict[str, set[str]] = {m: set() for m in known}
    for m, p in known.items():
        for target, _ in imports(p, known):
            if target != m and not m.startswith(target + "."):  # a submodule importing its own package
                g[m].add(target)
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for t in sorted(g[n]):
            if colour.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in colour:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(g):
        if n not in colour:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_harness_import_hidden_inside_a_function():
    known = modules()
    hidden = [f"{m} imports {t} inside a function" for m, p in sorted(known.items())
              if m not in LAZY_ALLOWED for t, at_top in imports(p, known)
              if not at_top and t not in LAZY_TARGETS]
    assert not hidden, "\n".join(hidden)


@pytest.mark.parametrize("package", ["config", "training", "certification", "report", "orchestration", "bounds",
                                     "attacks", "data", "runtime"])
def test_each_concept_has_its_package(package):
    assert (PACKAGE / package / "__init__.py").is_file()


def test_every_module_imports():
    """A name moved between modules fails here at once, not in the first test that happens to use it."""
    import importlib

    for name in sorted(modules()):
        if name != "harness.__main__":
            importlib.import_module(name)
