"""bench/thesis_grid.py: every planned run is a valid recipe; the sweep never scores the test split."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sslmed.plugins import get_registry
from sslmed.recipe import validate

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("thesis_grid", REPO / "bench" / "thesis_grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["thesis_grid"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("budget", ["smoke", "cpu", "gpu"])
def test_every_planned_run_validates_and_reuses_one_corpus_run_per_method_and_seed(budget, tmp_path):
    bench = load_bench()
    jobs = bench.plan(tmp_path, bench.BUDGETS[budget], list(bench.METHODS), list(bench.TARGETS), [0, 1, 2])
    registry = get_registry()
    corpus = {j.run_dir / "steps" / "corpus" for j in jobs if j.kind == "corpus"}
    assert len(corpus) == len(bench.METHODS) * 3
    for job in jobs:
        recipe = validate(job.recipe, registry, source=job.id)
        step = recipe.steps[0]
        assert step.seed == job.seed and step.image_size == bench.BUDGETS[budget].image_size
        if job.kind in ("transfer", "multistep"):
            assert Path(step.init_from) in corpus and job.method in step.init_from
            assert (step.max_steps == 0) == (job.kind == "transfer")
        if job.kind != "corpus":
            assert {"random_init", "raw_pixels"} <= set(recipe.evaluation.baselines)
            assert recipe.evaluation.test_split == "test" and recipe.evaluation.data == job.target
    kinds = {(j.target, j.method, j.kind) for j in jobs}
    assert ("kermany", "crsm", "multistep") in kinds and ("kermany", "simclr_mdre", "multistep") not in kinds


def test_the_sweep_scores_the_validation_split_only(tmp_path):
    bench = load_bench()
    jobs = bench.sweep_jobs(tmp_path, bench.BUDGETS["cpu"], "covid3", [0])
    registry = get_registry()
    assert len(jobs) == sum(len(values) for settings in bench.SWEEP.values() for values in settings.values())
    for job in jobs:
        recipe = validate(job.recipe, registry, source=job.id)
        assert recipe.evaluation.test_split == "val" and recipe.evaluation.train_split == "train"
