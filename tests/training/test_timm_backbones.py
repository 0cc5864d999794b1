"""Backbone ``timm``: a small CNN and a small ViT by name, on real data (72 PneumoniaMNIST
radiographs) through the whole path (train, resume, evaluate and export, predict, ONNX,
Grad-CAM or its reason); clear errors for an unknown model and for arguments the plugin sets itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from faults import write_small_data

from sslmed.app.cli import cli
from sslmed.artifacts.rundir import RunDir
from sslmed.core.errors import UsageError
from sslmed.core.plugins import get_registry
from sslmed.serving.explain import grad_cam
from sslmed.serving.predict import Predictor

pytest.importorskip("timm")

CNN = {"name": "timm", "model": "resnet10t"}
VIT = {"name": "timm", "model": "vit_tiny_patch16_224", "args": {"img_size": 32, "patch_size": 8, "depth": 2}}

RECIPE = """\
name: timm-{kind}
data_root: {root}
data:
  small: {{name: csv, path: small, split_column: split}}
defaults:
  backbone: {backbone}
  objective: {{name: simclr}}
  augmentations: [{{name: simclr}}]
  image_size: 32
  batch_size: 16
  max_steps: 2
  checkpoint_every_n_steps: 1
  accelerator: cpu
steps:
  - name: target
    data: small
evaluation:
  data: small
  probes: [linear]
  baselines: []
"""


@pytest.mark.parametrize(
    ("spec", "stride"),
    [(CNN, 32), (VIT, 8), ({**VIT, "args": {**VIT["args"], "global_pool": "avg"}}, 8)],
    ids=["cnn", "vit-token", "vit-avg"],
)
def test_contract_shapes(spec: dict, stride: int) -> None:
    backbone = get_registry().build("backbone", spec, in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert backbone(x).shape == (2, backbone.feature_dim)
    assert backbone.forward_features(x).shape == (2, backbone.feature_dim, 32 // stride, 32 // stride)
    assert backbone.stride == stride and backbone.in_channels == 1
    rgb = get_registry().build("backbone", spec, in_channels=3).eval()
    assert rgb(torch.randn(1, 3, 32, 32)).shape == (1, backbone.feature_dim)


def test_errors_name_the_key() -> None:
    registry = get_registry()
    with pytest.raises(UsageError, match="timm has no model 'resnet_xx'; did you mean"):
        registry.build("backbone", {"name": "timm", "model": "resnet_xx"})
    for key in ("pretrained", "in_chans", "num_classes"):
        with pytest.raises(UsageError, match=f"args.{key} cannot be set"):
            registry.build("backbone", {"name": "timm", "model": "resnet10t", "args": {key: 1}})
    with pytest.raises(UsageError, match="timm.create_model"):
        registry.build("backbone", {"name": "timm", "model": "resnet10t", "args": {"no_such_argument": 1}})


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_trains_resumes_exports_predicts_on_real_data(kind: str, data_dir: Path, tmp_path: Path) -> None:
    spec = CNN if kind == "cnn" else VIT
    write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")  # 72 real radiographs
    recipe = tmp_path / "timm.yaml"
    recipe.write_text(RECIPE.format(kind=kind, root=tmp_path, backbone=json.dumps(spec)))
    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    run = RunDir(next((runs / f"timm-{kind}").iterdir()))
    step = run.step("target")
    # interrupted after its last checkpoint: the step is not done until it exports again
    step.backbone_weights.unlink()
    step.backbone_meta.unlink()
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--resume", str(run.path)])
    assert result.exit_code == 0, result.output
    assert step.is_done()
    predictor = Predictor(run.path, device="cpu")
    assert predictor.meta["backbone"] == spec
    image = sorted((tmp_path / "small" / "images").glob("test_*.png"))[0]
    result = CliRunner().invoke(cli, ["predict", str(run.path), str(image)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)[str(image)]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    result = CliRunner().invoke(cli, ["export", str(run.path), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    from sslmed.serving.onnx_export import OnnxPredictor

    x = predictor.model_input(predictor.load(image))
    onnx = OnnxPredictor(run.path / "export").run(x.numpy())
    assert np.abs(onnx["probabilities"] - predictor.forward_batch(x)[0]).max() <= 1e-4
    if kind == "cnn":
        cam = grad_cam(predictor.model, x)
        # 32 px leaves resnet10t's stages under 4x4 positions: no map, and the caption says why
        assert cam.cam is None and "not shown" in cam.caption() and cam.probabilities.shape == (2,)
    else:  # timm's ViT pools its class token: Grad-CAM says why it has no map
        with pytest.raises(UsageError, match="global_pool: avg"):
            grad_cam(predictor.model, x)
