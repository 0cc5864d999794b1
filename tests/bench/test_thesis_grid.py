"""bench/thesis_grid.py: every planned run is a valid recipe; the sweep never scores the test split."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sslmed.core.plugins import get_registry
from sslmed.core.recipe import validate

REPO = Path(__file__).resolve().parents[2]


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
    assert len(corpus) == len(bench.MULTISTEP) * 3
    for job in jobs:
        recipe = validate(job.recipe, registry, source=job.id)
        step = recipe.steps[0]
        assert step.seed == job.seed and step.image_size == bench.BUDGETS[budget].image_size
        if job.kind in ("transfer", "multistep"):
            assert Path(step.init_from) in corpus and job.method in step.init_from
            assert (step.max_steps == 0) == (job.kind == "transfer")
        if job.kind != "corpus":
            assert recipe.evaluation.test_split == "test" and recipe.evaluation.data == job.target
            # the reference rows once per target and seed: in the SimCLR transfer run
            reference = job.kind == "transfer" and job.method == bench.REFERENCE_METHOD
            assert ({"random_init", "raw_pixels"} <= set(recipe.evaluation.baselines)) == reference
            assert (recipe.evaluation.finetune is not None) == (
                reference and bench.BUDGETS[budget].finetune is not None
            )
    kinds = {(j.target, j.method, j.kind) for j in jobs}
    assert ("kermany", "crsm", "multistep") in kinds and ("kermany", "simclr_mdre", "multistep") not in kinds
    for target in bench.TARGETS:
        for seed in (0, 1, 2):
            assert sum(j.target == target and j.seed == seed and j.kind == "transfer" for j in jobs) == 2


def test_the_sweep_scores_the_validation_split_only(tmp_path):
    bench = load_bench()
    jobs = bench.sweep_jobs(tmp_path, bench.BUDGETS["cpu"], "covid3", [0])
    registry = get_registry()
    # every value tried once; the shipped default once per method
    changed = sum(len(values) - 1 for settings in bench.SWEEP.values() for values in settings.values())
    assert len(jobs) == changed + len(bench.SWEEP)
    assert len({j.id for j in jobs}) == len(jobs)
    for job in jobs:
        recipe = validate(job.recipe, registry, source=job.id)
        assert recipe.evaluation.test_split == "val" and recipe.evaluation.train_split == "train"
