"""The floors of the `mops` namespace depend downward only: mops.cli -> mops.bench ->
mops.multitask (training -> sharing -> data) -> mops.minbert -> mops.kernels -> mops.common, and
nothing in the wheel imports the developer tools, tests or benchmarks. Read from the source of
every module, so an import hidden inside a function counts like any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The floors, lowest first: each module belongs to the longest floor its name starts with, and may
# import its own floor and those below. `mops` itself (the command line and the root package) is
# the top floor.
FLOORS = ["mops.common", "mops.kernels", "mops.minbert", "mops.multitask.data", "mops.multitask.sharing",
          "mops.multitask.training", "mops.bench", "mops"]
OUTSIDE_THE_WHEEL = ("tools", "tests", "benchmarks")


def floor_of(module: str) -> int:
    if module == "mops.multitask":  # the namespace of the three multitask floors: below all of them
        return FLOORS.index("mops.multitask.data")
    matches = [index for index, floor in enumerate(FLOORS) if module == floor or module.startswith(floor + ".")]
    return max(matches, key=lambda index: len(FLOORS[index]))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((REPO / "mops").rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path] | None = None) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for each project import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # `from . import x` / `from pkg import module` import submodules too
                found.append((target, child.lineno, in_function))
                found.extend((f"{target}.{alias.name}", child.lineno, in_function) for alias in child.names)
            visit(child, nested)

    visit(tree, False)
    modules = MODULES if modules is None else modules
    # A module's own parent packages are imported before it anyway: no edge to them.
    return [(target, line, inner) for target, line, inner in found
            if (target in modules or target.split(".")[0] in OUTSIDE_THE_WHEEL or target == "mops")
            and not name.startswith(target + ".")]


MODULES = package_modules()


def test_every_floor_is_found():
    assert {FLOORS[floor_of(name)] for name in MODULES} == set(FLOORS)
    assert floor_of("mops.multitask.training.trainer") == FLOORS.index("mops.multitask.training")
    assert floor_of("mops.cli") == floor_of("mops") == len(FLOORS) - 1


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_only_from_its_own_or_lower_floors(name):
    upward = [f"line {line}: {target}" for target, line, _ in imports_of(name, MODULES[name])
              if target.split(".")[0] in OUTSIDE_THE_WHEEL or floor_of(target) > floor_of(name)]
    assert not upward, f"{name} imports from a floor above it (or from outside the wheel): {upward}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_project_import_hides_inside_a_function(name):
    hidden = [f"line {line}: {target}" for target, line, inner in imports_of(name, MODULES[name]) if inner]
    assert not hidden, f"{name} imports project modules inside a function: {hidden}"


def test_the_module_graph_has_no_cycle():
    graph = {name: {t for t, _, _ in imports_of(name, path) if t in MODULES and t != name}
             for name, path in MODULES.items()}
    # A package's __init__ re-exports its modules; an edge into a package's own __init__ from one
    # of its modules would be the cycle to catch, so packages are nodes like any module.
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_the_reader_sees_upward_hidden_and_relative_imports(tmp_path):
    """The checks above can fail: imports written every way a module could write them are seen."""
    fake = tmp_path / "sneaky.py"
    fake.write_text("import torch\nfrom .dispatch import BACKENDS\nimport mops.minbert.model\nimport tools.gpu_check\n\n"
                    "def later():\n    from mops import cli\n    return cli\n")
    modules = {**MODULES, "mops.kernels.sneaky": fake}
    found = imports_of("mops.kernels.sneaky", fake, modules)
    assert ("mops.kernels.dispatch", 2, False) in found
    assert ("mops.minbert.model", 3, False) in found
    assert ("tools.gpu_check", 4, False) in found
    assert ("mops.cli", 7, True) in found and floor_of("mops.cli") > floor_of("mops.kernels.sneaky")
    assert not any(target == "torch" for target, _, _ in found)
