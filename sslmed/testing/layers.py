"""The layer order of the package, written once: ``tests/test_layout.py`` enforces it and
``bench/runner_path.py`` measures calls against it (docs/reference/architecture.md
shows the same table)."""

from __future__ import annotations

#: subpackages from the bottom up: each may import its own layer and those before it
LAYERS = (
    "sslmed",  # the top-level __init__ (``__version__``)
    "core",
    "data",
    "artifacts",
    "training",
    "evaluation",
    "serving",
    "report",
    "app",
    "default_plugins",
    "testing",
)


def layer_index(module: str) -> int:
    """Position in :data:`LAYERS` of a module ``sslmed.<subpackage>...`` (the top-level
    modules, including the stable re-exports, count as the package root)."""
    parts = module.split(".")
    if len(parts) < 3 and (len(parts) < 2 or parts[1] not in LAYERS):
        return 0
    return LAYERS.index(parts[1])
