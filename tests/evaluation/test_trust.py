"""Calibrated exports and the out-of-distribution flag, on real images.

The OOD check is measured end to end (fit at export, score through ``Predictor``) on
covid3 chest radiographs against ``not_cxr`` (CT, MRI, hand radiographs). The model is
a randomly initialised ResNet-18 at 64 px, so the test takes seconds; the figures for
trained models are in docs/benchmarks.md (bench/trust_check.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sslmed.core.plugins import get_registry
from sslmed.data.imaging import load_image
from sslmed.evaluation.calibration import softmax
from sslmed.evaluation.ood import detection_summary
from sslmed.evaluation.trust import fit_trust, probe_logits
from sslmed.serving.export import export_classifier
from sslmed.serving.predict import Predictor
from sslmed.training.transforms import eval_transform

SIZE = 64
PER_CLASS = {"train": 30, "val": 15, "test": 20}
NOT_CXR_PER_CLASS = 10


def labelled(folder: Path, per_class: int, skip: int = 0) -> list[tuple[Path, str]]:
    by_class: dict[str, list[Path]] = {}
    with open(folder / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_class.setdefault(row["label"], []).append(folder / "images" / row["path"])
    return [(path, label) for label in sorted(by_class) for path in by_class[label][skip : skip + per_class]]


@pytest.fixture(scope="module")
def export(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A ResNet-18 export (random init, 64 px) with a probe, temperature and OOD score
    fitted on real covid3 images, as evaluation exports it; and its split records."""
    torch.manual_seed(0)
    spec = {"name": "resnet18", "small_input": False}
    backbone = get_registry().build("backbone", spec, in_channels=1).eval()
    transform = eval_transform(SIZE, 1)
    splits, skip = {}, 0
    for name, count in PER_CLASS.items():
        splits[name] = labelled(data_dir / "covid3", count, skip)
        skip += count
    classes = sorted({label for _, label in splits["train"]})

    @torch.inference_mode()
    def features(records: list[tuple[Path, str]]) -> tuple[np.ndarray, np.ndarray]:
        x = backbone(torch.stack([transform(load_image(path)) for path, _ in records])).numpy()
        return x, np.array([classes.index(label) for _, label in records])

    data = {name: features(records) for name, records in splits.items()}
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(*data["train"])
    trust = fit_trust(probe, len(classes), data["train"], data["test"], data["val"])
    folder = tmp_path_factory.mktemp("trust-model")
    meta = {
        "extras": {},
        "recipe": "test-trust",
        "step": "random-init",
        "backbone": spec,
        "in_channels": 1,
        "image_size": SIZE,
        "classes": classes,
        "data": "covid3",
        "metrics": {},
    }
    export_classifier(folder, backbone, probe, meta, trust=trust)
    return folder, {"splits": splits, "probe": probe, "features": data, "trust": trust}


def test_export_carries_the_temperature_and_predictions_use_it(export: tuple[Path, dict]) -> None:
    folder, fitted = export
    meta = json.loads((folder / "model.json").read_text())
    temperature = meta["calibration"]["temperature"]
    assert temperature == pytest.approx(fitted["trust"].calibration.temperature)
    assert meta["calibration"]["fitted_on"] == "val" and meta["ood"]["fitted_on"] == "val"
    predictor = Predictor(folder, device="cpu")
    paths = [path for path, _ in fitted["splits"]["test"][:6]]
    got = np.array([[r.probabilities[c] for c in predictor.classes] for r in predictor.analyse(paths)])
    test_x = fitted["features"]["test"][0][:6]
    expected = softmax(probe_logits(fitted["probe"], test_x, len(predictor.classes)), temperature)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert all(r.calibrated for r in predictor.analyse(paths[:1]))


def test_images_that_are_not_chest_radiographs_are_flagged(export: tuple[Path, dict], data_dir: Path) -> None:
    folder, fitted = export
    predictor = Predictor(folder, device="cpu")
    chest = [path for path, _ in fitted["splits"]["test"]]
    others = labelled(data_dir / "not_cxr", NOT_CXR_PER_CLASS)
    in_scores = np.array([r.ood_score for r in predictor.analyse(chest)])
    out_results = predictor.analyse([path for path, _ in others])
    out_scores = np.array([r.ood_score for r in out_results])
    summary = detection_summary(in_scores, out_scores, predictor.ood.threshold)
    assert summary["auroc"] >= 0.95, summary
    assert summary["flagged_other_at_5pct_in"] >= 0.9, summary
    assert summary["flagged_in"] <= 0.1, summary  # the stored threshold spares chest radiographs
    assert all(r.ood_flag == (r.ood_score > predictor.ood.threshold) for r in out_results)


def test_out_of_fold_fit_without_a_validation_split(export: tuple[Path, dict]) -> None:
    _folder, fitted = export
    data = fitted["features"]
    trust = fit_trust(fitted["probe"], 3, data["train"], data["test"], None)
    assert trust.calibration.fitted_on.startswith("train (5-fold")
    assert trust.ood.fitted_on.startswith("train (5-fold")
    # out of fold, the threshold is not fitted on the images it judges: chest test images mostly pass
    assert trust.ood.flag(trust.test_scores).mean() <= 0.15


def test_fine_tuned_models_report_calibration_too(data_dir: Path) -> None:
    """A (very short) fine-tuning on real covid3 images: with a validation split the row
    carries a temperature fitted there and ECE/Brier on the test split."""
    from sslmed.core.recipe import FineTuneSettings
    from sslmed.evaluation.features import LabelledSplit
    from sslmed.evaluation.finetune import finetune_proba

    source = get_registry().build(
        "dataset",
        {"name": "csv", "path": "covid3", "patient_column": "patient_id", "test_size": 0.2, "val_size": 0.1},
        data_root=data_dir,
    )
    splits = {name: LabelledSplit(source, source.records(name)[::8]) for name in ("train", "val", "test")}
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", {"name": "resnet18", "small_input": True}, in_channels=1)
    settings = FineTuneSettings(epochs=1, max_steps=3, batch_size=16)
    proba, info = finetune_proba(backbone, splits["train"], splits["val"], splits["test"], 3, 16, 1, settings, seed=0)
    calibration = info["calibration"]
    assert calibration["fitted_on"] == "val" and calibration["fitted_images"] == len(splits["val"].records)
    assert calibration["test_images"] == len(proba) and calibration["temperature"] > 0
    assert calibration["brier_after"] <= calibration["brier_before"] + 0.05


def test_results_lines_name_the_split_that_was_scored():
    """A validation-only evaluation (a sweep) must not call its numbers test numbers."""
    from sslmed.app.results import trust_markdown

    trust = {
        "calibration": {
            "temperature": 1.5,
            "fitted_on": "train (5-fold out-of-fold)",
            "fitted_images": 100,
            "test_images": 50,
            "ece_before": 0.1,
            "ece_after": 0.05,
            "brier_before": 0.2,
            "brier_after": 0.18,
            "bins": 15,
        },
        "ood": {"threshold": 3.0, "quantile": 0.99, "fitted_on": "train", "test_flagged": 0.02, "test_images": 50},
    }
    text = trust_markdown(trust, "val")
    assert "on the val split (50 images)" in text and "val images flagged: 2.0% of 50" in text
    assert "test" not in text.replace("test_", "")
