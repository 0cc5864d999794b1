"""``sslmed export --format onnx``: onnxruntime agrees with PyTorch on real images
(probabilities to 1e-4, the same OOD flags), at any batch size; the export folder
describes itself (config.json, model card with intervals) and loads with sslmed.load_model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sslmed
from sslmed.app.cli import cli
from sslmed.serving.hub_export import write_export
from sslmed.serving.predict import Predictor
from sslmed.testing.models import covid3_records, shared_model_export

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run-like folder (``model/`` + ``results.json``) exported with ONNX to ``export/``."""
    run = tmp_path_factory.mktemp("onnx-run")
    shutil.copytree(shared_model_export(data_dir), run / "model")
    meta = json.loads((run / "model" / "model.json").read_text())
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 60)
    proba = np.eye(3)[np.where(rng.random(60) < 0.7, y_true, (y_true + 1) % 3)] * 0.8 + 0.2 / 3
    row = {k: meta["metrics"].get(k) for k in ("model", "probe", "label_fraction")}
    row["test_predictions"] = {"y_true": y_true.tolist(), "proba": proba.tolist()}
    (run / "results.json").write_text(json.dumps({"rows": [row]}))
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["out"] == str(run / "export")
    return run / "export"


@pytest.fixture(scope="module")
def images(data_dir: Path) -> list[Path]:
    """Real chest X-rays (covid3) and real images that are not (not_cxr)."""
    other = sorted((data_dir / "not_cxr" / "images").rglob("*.jpeg"))[::50][:10]
    return [path for path, _ in covid3_records(data_dir, 4, skip=20)] + other


def test_onnxruntime_matches_pytorch_on_real_images(exported: Path, images: list[Path]) -> None:
    from sslmed.serving.onnx_export import OnnxPredictor

    predictor = Predictor(exported, device="cpu")
    torch_results = predictor.analyse(images)  # the path sslmed predict takes (fused batch norm)
    pixels = np.concatenate([predictor.model_input(predictor.load(p)).numpy() for p in images])
    onnx = OnnxPredictor(exported)
    out = onnx.run(pixels)
    expected = np.array([[r.probabilities[c] for c in predictor.classes] for r in torch_results])
    assert out["probabilities"].shape == (len(images), len(predictor.classes))
    assert np.abs(out["probabilities"] - expected).max() <= 1e-4
    threshold = onnx.config["ood"]["threshold"]
    distance_flags = [r.ood_score > r.ood_threshold for r in torch_results]
    assert (out["ood_score"] > threshold).tolist() == distance_flags
    assert predictor.ood is not None
    assert predictor.ood.flag(predictor.ood.score(out["features"])).tolist() == distance_flags
    np.testing.assert_allclose(out["ood_score"], [r.ood_score for r in torch_results], rtol=1e-3)
    # the input gate is in the graph too: its score, and the flag predict and the page give
    assert predictor.gate is not None
    np.testing.assert_allclose(out["gate_score"], [r.gate_score for r in torch_results], rtol=1e-4)
    assert (out["gate_score"] > onnx.config["ood"]["gate"]["threshold"]).tolist() == [
        r.gate_score > r.gate_threshold for r in torch_results
    ]
    flags = [r.ood_flag for r in torch_results]
    assert out["ood_flag"].tolist() == flags
    assert any(flags) and not all(flags), flags  # real images of both kinds: the check can tell them apart
    assert sum(flags) > sum(distance_flags), "the not_cxr images only the gate catches are flagged in the graph too"
    # dynamic batch: one image at a time gives the same answers
    single = np.concatenate([onnx.run(pixels[i : i + 1])["probabilities"] for i in range(3)])
    assert np.abs(single - out["probabilities"][:3]).max() <= 1e-5


def test_export_folder_describes_itself(exported: Path, images: list[Path]) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.json",
        "model.onnx",
        "model.safetensors",
    ]
    config = json.loads((exported / "config.json").read_text())
    meta = json.loads((exported / "model.json").read_text())
    assert list(config["id2label"].values()) == meta["classes"]
    assert config["onnx"] == {
        "input": "pixel_values",
        "outputs": ["probabilities", "features", "ood_score", "gate_score", "ood_flag"],
    }
    assert set(config["ood"]) == {"score", "threshold", "quantile", "gate"}
    assert config["preprocessing"]["resize"] == [meta["image_size"]] * 2
    card = (exported / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sslmed\n")
    assert "## Intended use" in card and "## Limits" in card and "Not a medical device" in card
    accuracy = next(line for line in card.splitlines() if line.startswith("| accuracy |"))
    low, high = (float(v) for v in accuracy.split("|")[3].strip().split("-"))
    assert 0.5 < low < high < 0.95, accuracy  # the bootstrap interval of the results row (70% correct)
    model = sslmed.load_model(exported, device="cpu")
    expected = Predictor(exported, device="cpu").analyse(images[:1])[0].probabilities
    assert model.predict(images[0]).probabilities == expected


def test_unknown_format_and_missing_model_are_one_line_errors(exported: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--format", "onnx"])
    assert result.exit_code == 1 and "no exported model here" in result.output
    assert result.output.count("\n") == 1
    from sslmed.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown export format 'tflite'"):
        write_export(exported, tmp_path / "x", ("tflite",))
