"""Before anything runs: a recipe file -> the validated recipe -> the data sources it uses.

Every command that acts on a recipe (``run``, ``validate``, ``eval``, ``data``) starts
here, so a recipe is loaded, and its data checked, one way.
"""

from __future__ import annotations

from pathlib import Path

from sslmed.artifacts.rundir import RECIPE, RunDir
from sslmed.core.errors import DataError, RecipeError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import Recipe, load_recipe
from sslmed.core.registry import Registry
from sslmed.data.catalog import fetch_hint
from sslmed.data.roots import resolve_data_root
from sslmed.data.sources import ImageSource


def load_recipe_file(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[Recipe, Registry]:
    """The recipe validated against the loaded plugins (:func:`sslmed.core.recipe.load_recipe`),
    with its data root made absolute (the default root where the recipe sets none)."""
    registry = get_registry()
    recipe = load_recipe(path, registry, overrides)
    root = resolve_data_root(recipe.data_root)
    return recipe.model_copy(update={"data_root": str(root.resolve())}), registry


def load_run_recipe(run: RunDir) -> tuple[Recipe, Registry]:
    """The validated recipe a run was made with: the one way a run is loaded for work
    (``sslmed eval``, ``--resume``); the report reads the plain documents."""
    if not run.is_run():
        raise UsageError(f"{run.path}: not a run folder (no {RECIPE})")
    try:
        return load_recipe_file(run.recipe_file)
    except RecipeError as exc:
        raise UsageError(f"{run.path}: its recipe no longer validates (a plugin missing?):\n{exc}") from None


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
