"""bench/evidence.py: the thesis's claims are paired over the seeds both methods have, and
the comparison keeps one copy of each run's predictions."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def load_evidence():
    spec = importlib.util.spec_from_file_location("evidence", REPO / "bench" / "evidence.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence"] = module
    spec.loader.exec_module(module)
    return module


def cell(y_true, correct: float, seed: int) -> dict:
    """Predictions that are right for about ``correct`` of the images."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(y_true)) < correct
    proba = [[0.9, 0.1] if (y == 0) == ok else [0.1, 0.9] for y, ok in zip(y_true, right, strict=True)]
    return {"y_true": list(y_true), "proba": proba}


def test_claims_pair_only_the_seeds_both_methods_have_and_call_a_clear_gain_better():
    evidence = load_evidence()
    y = [0, 1] * 100
    predictions = {
        "crsm__seed1": {"kermany/linear_1": cell(y, 0.95, 1)},
        "crsm__seed2": {"kermany/linear_1": cell(y, 0.95, 2)},  # no simclr seed 2: not paired
        "simclr__seed1": {"kermany/linear_1": cell(y, 0.60, 3)},
        "random_init@simclr__seed1": {"kermany/linear_1": cell(y, 0.5, 4)},
        "simclr_mdre__seed1": {"kermany/linear_1": cell(y, 0.60, 5)},
        "simclr_erasing__seed1": {"kermany/linear_1": cell(y, 0.61, 5)},
    }
    found = {c["claim"].split(" (")[0]: c for c in evidence.claims(predictions)}
    crsm = found["CRSM > SimCLR"]
    assert crsm["seeds"] == [1]
    assert crsm["cells"]["kermany/linear_1"]["verdict"] == "better"
    assert crsm["cells"]["kermany/linear_1"]["seeds"] == 1
    # the same images right and wrong, one point apart: no claim either way
    assert found["MDRE > random erasing"]["cells"]["kermany/linear_1"]["verdict"] == "no clear difference"


def test_predictions_keep_one_copy_of_each_run_and_the_table_shows_references_once_per_seed(tmp_path):
    evidence = load_evidence()
    y = [0, 1] * 10
    results = tmp_path / "results"
    results.mkdir()
    stale = {
        "crsm__seed1": {"kermany/linear_1": cell(y, 0.9, 0)},
        "sslmed:corpus@crsm__seed1": {"kermany/linear_1": cell(y, 0.9, 0)},  # an older sweep's copy
        "random_init@crsm__seed1": {"kermany/fine-tune_0.1": cell(y, 0.5, 0)},
        "random_init@simclr__seed1": {"kermany/fine-tune_0.1": cell(y, 0.5, 0)},
    }
    (results / "predictions.json").write_text(json.dumps(stale))
    (tmp_path / "runs").mkdir()
    kept = evidence._predictions(tmp_path, results)
    assert set(kept) == {"crsm__seed1", "random_init@crsm__seed1", "random_init@simclr__seed1"}
    assert [name for name in kept if evidence._is_shown(name)] == ["crsm__seed1", "random_init@simclr__seed1"]


def test_a_run_gets_its_own_seeds_references_else_those_of_another_seed():
    evidence = load_evidence()
    y = [0, 1] * 10
    seed1 = {"kermany/linear_1": cell(y, 0.5, 1)}
    seed2 = {"kermany/linear_1": cell(y, 0.6, 2)}
    predictions = {"random_init@simclr__seed1": seed1, "random_init@simclr__seed2": seed2}
    assert evidence.references_of(predictions, "random_init", 2) == seed2
    # a seed-0 run (moco) whose sweep had no simclr run of its own: the evaluation seed is the
    # same in every run, so another seed's references are the same rows
    assert evidence.references_of(predictions, "random_init", 0) == seed1
    assert evidence.references_of(predictions, "raw_pixels", 0) == {}


def test_the_multi_step_claims_pair_the_staged_runs_and_the_corpus_run():
    evidence = load_evidence()
    y = [0, 1] * 100
    predictions = {
        "simclr__seed1": {"kermany/linear_1": cell(y, 0.6, 1)},
        "simclr_multistep__seed1": {"kermany/linear_1": cell(y, 0.95, 2)},
        "simclr_single__seed1": {"kermany/linear_1": cell(y, 0.6, 3)},
    }
    found = {c["claim"]: c for c in evidence.claims(predictions)}
    step = found["multi-step > single step (simclr: corpus, then kermany)"]
    assert step["seeds"] == [1] and step["cells"]["kermany/linear_1"]["verdict"] == "better"
    added = found["the kermany step adds to the corpus step (simclr)"]
    assert added["cells"]["kermany/linear_1"]["verdict"] == "better"
    assert not any("crsm" in claim for claim in found)  # no crsm runs: no crsm claim


def test_a_summary_on_a_new_machine_keeps_the_times_an_earlier_summary_recorded(tmp_path):
    evidence = load_evidence()
    y = [0, 1] * 10
    out, results = tmp_path / "out", tmp_path / "results"
    (out / "compare" / "runs").mkdir(parents=True)
    results.mkdir()
    predictions = {"moco": {"kermany/linear_1": cell(y, 0.8, 0)}}
    (results / "predictions.json").write_text(json.dumps(predictions))
    (results / "comparison.json").write_text(json.dumps({"table": {"moco": {"seconds": 807.5}}}))
    args = argparse.Namespace(
        out=str(out), results=str(results), method="simclr", epochs=46, snapshot_every=5, image_size=32,
        batch_size=128, lr=0.002, precision="bf16-mixed", workers=0, seed=0, max_steps=-1, compare_epochs=10,
    )  # fmt: skip
    assert evidence.comparison_summary(args) == 0
    table = json.loads((results / "comparison.json").read_text())["table"]
    assert table["moco"]["seconds"] == 807.5
    assert "| moco | 807.5 |" in (results / "comparison.md").read_text()
