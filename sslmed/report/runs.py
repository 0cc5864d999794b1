"""Run discovery: the finished run folders a report reads, and what it reads from each."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslmed.errors import UsageError


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
        if (path / "results.json").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("results.json") if (p.parent / "recipe.yaml").is_file())
        if not below:
            raise UsageError(
                f"{path}: not a run folder and no run folder below it "
                "(no results.json; did the run's evaluation finish?)"
            )
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def load_run(path: Path) -> Run:
    """Read what the report needs from a run folder."""

    def read_json(name: str) -> dict[str, Any]:
        file = path / name
        return json.loads(file.read_text()) if file.is_file() else {}

    recipe = yaml.safe_load((path / "recipe.yaml").read_text()) if (path / "recipe.yaml").is_file() else {}
    return Run(path, recipe or {}, read_json("results.json"), read_json("manifest.json"), read_json("timings.json"))
