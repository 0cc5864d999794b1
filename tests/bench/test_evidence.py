"""bench/evidence.py: the thesis's claims are paired over the seeds both methods have, and
the comparison keeps one copy of each run's predictions."""

from __future__ import annotations

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
