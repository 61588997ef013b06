"""
The package's layout, checked: the core knows nothing of HTTP or SSH, no
module imports another that (indirectly) imports it back, and only the
assembly (C{gitserve.tap}, C{gitserve.app}) touches the global reactor.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPOSITORY_ROOT

PACKAGE = REPOSITORY_ROOT / "gitserve"
FRONT_DOORS = ("twisted.web", "twisted.conch")
ABOVE_THE_CORE = ("gitserve.http", "gitserve.app", "gitserve.tap")
# Only these may import the global reactor: they assemble the daemon and pass
# the reactor down to everything else.
REACTOR_ALLOWED = ("gitserve.tap", "gitserve.app")
GLOBAL_REACTOR = "twisted.internet.reactor"


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(REPOSITORY_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {moduleName(path): path for path in sorted(PACKAGE.rglob("*.py"))}
CORE_MODULES = sorted(name for name in MODULES if name.startswith("gitserve.core"))


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    """Whether module C{name} is one of C{prefixes} or lies below one."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def isTypeChecking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def importNodes(tree: ast.AST, moduleLevelOnly: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """
    The import statements in C{tree}; with C{moduleLevelOnly}, those that run
    when the module is imported: not in functions or classes, not under
    C{if TYPE_CHECKING:}.
    """
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif moduleLevelOnly and isinstance(
            node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda
        ):
            continue
        elif moduleLevelOnly and isinstance(node, ast.If) and isTypeChecking(node):
            yield from (
                imported
                for child in node.orelse
                for imported in importNodes(ast.Module(body=[child], type_ignores=[]), True)
            )
        else:
            yield from importNodes(node, moduleLevelOnly)


def importedNames(module: str, moduleLevelOnly: bool = False) -> set[str]:
    """
    Every module C{module} names in an import: C{from a import b} names both
    C{a} and C{a.b} (b may be a submodule: C{from twisted import web}), and
    relative imports are resolved against C{module}'s package.
    """
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in importNodes(tree, moduleLevelOnly):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*anchor, *filter(None, [base])])
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("module", CORE_MODULES)
def test_coreNamesNoFrontDoor(module: str) -> None:
    """No gitserve.core module imports twisted.web, twisted.conch, or gitserve's front doors."""
    forbidden = sorted(
        name for name in importedNames(module) if within(name, FRONT_DOORS + ABOVE_THE_CORE)
    )
    assert forbidden == [], f"{module} imports {forbidden}"


# Run in a fresh interpreter: first the outside modules gitserve.core imports
# itself (whatever those pull in is theirs, not ours), then every core module;
# print what the core's own imports added.
DYNAMIC_CHECK = """
import importlib, json, sys
outside, core = json.loads(sys.argv[1])
for name in outside:
    try:
        importlib.import_module(name)
    except ImportError:
        pass  # 'from a import b' where b is a name, not a module
before = set(sys.modules)
for name in core:
    importlib.import_module(name)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importingTheCoreLoadsNoFrontDoor() -> None:
    """Importing every gitserve.core module loads no twisted.web, twisted.conch or front door."""
    outside = sorted(
        {
            name
            for module in CORE_MODULES
            for name in importedNames(module)
            if not within(name, ("gitserve",))
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", DYNAMIC_CHECK, json.dumps([outside, CORE_MODULES])],
        cwd=REPOSITORY_ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPOSITORY_ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    added = json.loads(result.stdout)
    assert set(CORE_MODULES) <= set(added) | {"gitserve", "gitserve.core"}
    loaded = [name for name in added if within(name, FRONT_DOORS + ABOVE_THE_CORE)]
    assert loaded == [], loaded


def findCycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in C{graph} as the list of its modules (first repeated last), or L{None}."""
    done: set[str] = set()
    path: list[str] = []
    onPath: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        onPath.add(node)
        for target in sorted(graph[node]):
            if target in onPath:
                return path[path.index(target) :] + [target]
            if target not in done and (cycle := visit(target)) is not None:
                return cycle
        onPath.discard(path.pop())
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)) is not None:
            return cycle
    return None


def importGraph() -> dict[str, set[str]]:
    """Which gitserve modules each gitserve module imports as it is imported."""
    return {
        module: {name for name in importedNames(module, moduleLevelOnly=True) if name in MODULES}
        - {module}
        for module in MODULES
    }


def test_noImportCycles() -> None:
    """No gitserve module imports, at module level, one that imports it back."""
    cycle = findCycle(importGraph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycleFinderFindsACycle() -> None:
    """The control: the cycle finder reports a cycle when there is one, and names it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert findCycle(graph) == ["a", "b", "c", "a"]
    assert findCycle({"a": {"b"}, "b": set()}) is None


def test_typeCheckingImportsAreNotModuleLevel() -> None:
    """The control: an import under 'if TYPE_CHECKING:' or in a function is not module level."""
    tree = ast.parse(
        "import a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "def f():\n    import d\n"
        "try:\n    import e\nexcept ImportError:\n    pass\n"
    )
    moduleLevel = {
        alias.name
        for node in importNodes(tree, moduleLevelOnly=True)
        for alias in node.names
        if isinstance(node, ast.Import)
    }
    assert moduleLevel == {"a", "c", "e"}


@pytest.mark.parametrize(
    "module", sorted(name for name in MODULES if not within(name, REACTOR_ALLOWED))
)
def test_onlyTheAssemblyImportsTheGlobalReactor(module: str) -> None:
    """Below gitserve.tap and gitserve.app nothing imports the global reactor, anywhere."""
    assert GLOBAL_REACTOR not in importedNames(module), f"{module} imports the global reactor"


def test_reactorCheckSeesTheAssemblysReactor() -> None:
    """The control: gitserve.tap's own (function-level) reactor import is seen by the check."""
    assert GLOBAL_REACTOR in importedNames("gitserve.tap")
    assert GLOBAL_REACTOR not in importedNames("gitserve.tap", moduleLevelOnly=True)
