"""bench/thesis_experiments.py: every planned run is a valid recipe at every scale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sslmed.app.prepare import load_recipe_file

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("thesis_experiments", REPO / "bench" / "thesis_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scale", ["smoke", "cpu", "gpu"])
def test_every_planned_run_validates(scale: str):
    bench = load_bench()
    plan = bench.experiments(bench.TARGETS, bench.RECIPES, [0, 1], scale, jobs=3)
    assert len(plan) == len(bench.TARGETS) * len(bench.RECIPES) * 2
    for experiment in plan:
        recipe, _registry = load_recipe_file(
            REPO / "recipes" / f"{experiment['recipe']}.yaml", tuple(experiment["overrides"])
        )
        assert recipe.evaluation is not None and recipe.evaluation.data == experiment["target"]
        probed = recipe.probed_step()
        if experiment["recipe"] == "crsm_transfer":  # the corpus never holds the target set
            assert probed.data == f"corpus_no_{experiment['target']}"
        else:
            assert probed.data == experiment["target"]
        assert {s.seed for s in recipe.steps} == {experiment["seed"]}
    with_references = [e for e in plan if "evaluation.baselines=[random_init,supervised]" in e["overrides"]]
    assert sorted(e["target"] for e in with_references) == sorted(bench.TARGETS)
