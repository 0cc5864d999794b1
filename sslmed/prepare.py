"""Before anything runs: a recipe file -> the validated recipe -> the data sources it uses.

Every command that acts on a recipe (``run``, ``validate``, ``eval``, ``data``) starts
here, so a recipe is loaded, and its data checked, one way.
"""

from __future__ import annotations

from pathlib import Path

from sslmed.catalog import fetch_hint
from sslmed.data import ImageSource, resolve_data_root
from sslmed.errors import DataError
from sslmed.plugins import get_registry
from sslmed.recipe import Recipe, load_raw, validate
from sslmed.registry import Registry


def load_recipe_file(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[Recipe, Registry]:
    """Load and validate a recipe; relative ``data_root`` resolves from the recipe's folder."""
    registry = get_registry()
    data, lines = load_raw(path, overrides)
    recipe = validate(data, registry, lines, source=str(path))
    root = resolve_data_root(recipe.data_root, Path(path).resolve().parent)
    return recipe.model_copy(update={"data_root": str(root.resolve())}), registry


def build_sources(recipe: Recipe, registry: Registry, only: set[str] | None = None) -> dict[str, ImageSource]:
    """Every data source the recipe uses, checked before training; all problems at once."""
    root = Path(recipe.data_root or resolve_data_root())
    used = {s.data for s in recipe.steps} | ({recipe.evaluation.data} if recipe.evaluation else set())
    sources, problems = {}, []
    for alias, spec in recipe.data.items():
        if alias not in used or (only is not None and alias not in only):
            continue
        try:
            sources[alias] = registry.build("dataset", spec.spec(), data_root=root)
        except DataError as exc:
            problems.append(f"data.{alias} ({spec.name}): {exc}")
    if problems:
        hint = fetch_hint(recipe, root)
        if hint:
            problems = [hint] + problems
        raise DataError("; ".join(problems) if len(problems) == 1 else "data problems:\n  " + "\n  ".join(problems))
    for step in recipe.steps:
        if step.data in sources:
            sources[step.data].records(step.split)  # raises for an unknown split
    if recipe.evaluation:
        source = sources[recipe.evaluation.data]
        for split in (recipe.evaluation.train_split, recipe.evaluation.test_split):
            records = source.records(split)
            if not any(r.is_labelled for r in records):  # partly labelled data: the probes use the labelled part
                raise DataError(
                    f"evaluation data {recipe.evaluation.data!r} split {split!r} has no labelled images; "
                    "the probe needs labels"
                )
    return sources
