"""Issue 21 (9): model.json is validated (pydantic, size limit) before it is used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from sslmed.artifacts.exports import save_model
from sslmed.core.errors import CheckpointError
from sslmed.core.plugins import get_registry
from sslmed.serving.predict import Predictor

SPEC = {"name": "resnet18", "small_input": True}


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init model export of 3 classes (no data needed)."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    backbone = get_registry().build("backbone", SPEC, in_channels=1)
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update({"head.weight": torch.zeros(3, backbone.feature_dim), "head.bias": torch.zeros(3)})
    meta = {"backbone": SPEC, "in_channels": 1, "image_size": 32, "classes": ["a", "b", "c"]}
    save_model(folder, tensors, {**meta, "task": "multiclass", "activation": "softmax"})
    return folder


def variant(good: Path, tmp_path: Path, change: Any) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(good / "model.safetensors")
    meta = json.loads((good / "model.json").read_text())
    text = change(meta) if callable(change) else change
    (folder / "model.json").write_text(text if isinstance(text, str) else json.dumps(meta))
    return folder


def test_the_good_export_loads(good: Path) -> None:
    assert Predictor(good, device="cpu").classes == ["a", "b", "c"]


CASES = {
    "temperature 0": (lambda m: m.update(calibration={"temperature": 0}), "calibration.temperature"),
    "temperature text": (lambda m: m.update(calibration={"temperature": "1"}), "calibration.temperature"),
    "classes a number": (lambda m: m.update(classes=5), "classes"),
    "image_size 0": (lambda m: m.update(image_size=0), "image_size"),
    "image_size true": (lambda m: m.update(image_size=True), "image_size"),
    "in_channels 2": (lambda m: m.update(in_channels=2), "in_channels"),
    "backbone text": (lambda m: m.update(backbone="resnet18"), "backbone"),
    "threshold nan": (lambda m: m.update(ood={"threshold": float("nan")}), "ood.threshold"),
    "shape mismatch": (lambda m: m.update(classes=["a", "b"]), "size mismatch"),
    "nested": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "a list": ("[1, 2]", "expected a JSON object"),
    # found by bench/fuzz.py: a raw UsageError without the file's name
    "backbone option unknown": (lambda m: m["backbone"].update(x=1), "cannot be built"),
    "backbone name unknown": (lambda m: m["backbone"].update(name="nope"), "cannot be built"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_json_is_one_clear_line(good: Path, tmp_path: Path, case: str) -> None:
    change, where = CASES[case]
    folder = variant(good, tmp_path, change)
    with pytest.raises(CheckpointError) as error:
        Predictor(folder, device="cpu")
    message = str(error.value)
    assert "\n" not in message and where in message and "model" in message, message


def test_predict_reports_it_without_a_traceback(good: Path, tmp_path: Path) -> None:
    from sslmed.app.cli import cli

    folder = variant(good, tmp_path, lambda m: m.update(calibration={"temperature": 0}))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (16, 16)).save(image)
    result = CliRunner().invoke(cli, ["predict", str(folder), str(image)])
    assert result.exit_code == 1 and "temperature" in result.output and "Traceback" not in result.output


def test_a_huge_model_json_is_refused_before_it_is_read(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sslmed.artifacts.exports as exports

    monkeypatch.setattr(exports, "MAX_META_BYTES", 10_000)
    folder = variant(good, tmp_path, lambda m: m.update(padding="x" * 20_000))
    with pytest.raises(CheckpointError, match="allowed"):
        Predictor(folder, device="cpu")
