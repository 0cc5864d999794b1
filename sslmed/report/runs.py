"""Run discovery: the finished run folders a report reads, and what it reads from each."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslmed.artifacts.rundir import RESULTS_JSON, RunDir
from sslmed.core.errors import UsageError


@dataclass
class Run:
    """One finished run folder."""

    path: Path
    recipe: dict[str, Any]
    results: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.results.get("recipe") or self.path.parent.name)

    @property
    def target(self) -> str:
        return str((self.recipe.get("evaluation") or {}).get("data", "?"))

    @property
    def classes(self) -> list[str]:
        return list(self.results.get("classes", []))

    def identity(self) -> str:
        """The recipe without its seeds: runs with equal identities differ only by seed."""
        doc = copy.deepcopy(self.recipe)
        for step in doc.get("steps", []):
            step.pop("seed", None)
        if doc.get("evaluation"):
            doc["evaluation"].pop("seed", None)
        return json.dumps(doc, sort_keys=True, default=str)

    def seed(self) -> tuple[Any, ...]:
        return tuple(s.get("seed") for s in self.recipe.get("steps", [])) + (
            (self.recipe.get("evaluation") or {}).get("seed"),
        )


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path itself if it has ``results.json``, else any below it."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{path}: no such folder")
        if RunDir(path).has_results():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(RESULTS_JSON) if RunDir(p.parent).is_run())
        if not below:
            raise UsageError(
                f"{path}: not a run folder and no run folder below it "
                "(no results.json; did the run's evaluation finish?)"
            )
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def load_run(path: Path) -> Run:
    """Read what the report needs from a run folder (plain documents: a run is reported
    even when a plugin it used is no longer installed)."""
    run = RunDir(path)
    return Run(path, run.read_recipe_document(), run.read_results(), run.read_manifest(), run.read_timings())
