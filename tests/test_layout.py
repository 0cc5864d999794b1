"""The package's shape, checked: subpackages import only downwards, no import cycles,
the stable plugin surface is only re-exports, and every function-local import says why.

The allowed order is :data:`sslmed.testing.layers.LAYERS`, written once there; docs/reference/architecture.md
shows the same table. A new feature that needs an arrow upwards is a sign to move code.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

from sslmed.testing.layers import LAYERS

PACKAGE = Path(__file__).resolve().parents[1] / "sslmed"


#: the stable import paths of third-party plugins: re-exports only, never imported inside sslmed
STABLE = ("hookspecs", "adapters", "registry", "models", "methods", "errors", "plugins", "cli")

#: words that say a function-local import is there for start-up speed (``sslmed --help``)
LAZY_REASONS = ("start-up", "startup", "--help", "lazily", "heavy", "only when")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    local: bool
    comment: str


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "sslmed"
    return "stable" if parts[1] in STABLE and len(parts) == 2 else parts[1]


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of an sslmed module in ``path``, function-local ones included."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    local_nodes = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Import | ast.ImportFrom)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        comment = " ".join(lines[node.lineno - 1 : node.end_lineno])
        above = node.lineno - 2  # the comment may head a block of imports
        while above >= 0 and lines[above].strip().startswith(("from ", "import ", "#")):
            comment += " " + lines[above]
            if lines[above].strip().startswith("#"):
                break
            above -= 1
        for target in dict.fromkeys(targets):
            if target in known and target != name:
                found.append(Import(name, target, node.lineno, id(node) in local_nodes, comment))
    return found


def all_imports() -> list[Import]:
    found = modules()
    return [imp for name, path in found.items() for imp in imports_of(name, path, set(found))]


def test_every_subpackage_is_in_the_layer_table():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYERS[1:]), "add the new subpackage to LAYERS (and the architecture page)"
    flat = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert flat == set(STABLE), "top-level modules are only the stable re-exports; new code goes in a subpackage"


def test_no_import_goes_up_a_layer():
    upward = []
    for imp in all_imports():
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source == "stable":
            continue
        if target == "stable":
            upward.append(f"{imp.source}:{imp.line} imports the plugin re-export {imp.target}; import its home")
        elif LAYERS.index(target) > LAYERS.index(source):
            upward.append(f"{imp.source}:{imp.line} -> {imp.target} ({source} may not import {target})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports():
        if layer_of(imp.source) != "stable":
            graph[imp.source].add(imp.target)
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_function_local_imports_say_why():
    silent = [
        f"{imp.source}:{imp.line} ({imp.target})"
        for imp in all_imports()
        if imp.local and not any(reason in imp.comment for reason in LAZY_REASONS)
    ]
    assert not silent, (
        "a function-local import must be for start-up speed and say so in a comment "
        "(e.g. '# lazily: torch costs 2 s at start-up'); move code if it dodges a cycle:\n" + "\n".join(silent)
    )


@pytest.mark.parametrize("name", STABLE)
def test_the_stable_plugin_paths_re_export_their_home(name):
    shim = importlib.import_module(f"sslmed.{name}")
    exported = shim.__all__
    assert exported, f"sslmed.{name} exports nothing"
    for attribute in exported:
        value = getattr(shim, attribute)
        home = getattr(value, "__module__", None)
        if home is not None and home.startswith("sslmed."):
            assert not home.startswith(f"sslmed.{name}"), f"sslmed.{name}.{attribute} is defined in the re-export"
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    defined = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    assert not defined, f"sslmed/{name}.py defines code; it may only re-export"
