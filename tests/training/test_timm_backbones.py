"""Backbone ``timm``: a small CNN and a small ViT by name, on real data (72 PneumoniaMNIST
radiographs) through the whole path (train, resume, evaluate and export, predict, ONNX,
Grad-CAM or its reason); the ViT with DINO and multi-crop (local views at another size),
its teacher exported and served over HTTP; clear errors for an unknown model, for
arguments the plugin sets itself and for input sizes a ViT cannot take."""

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
  objective: {objective}
  augmentations: [{augmentations}]
  image_size: 32
  batch_size: 16
  max_steps: 2
  checkpoint_every_n_steps: 1
  accelerator: cpu
  keep_checkpoints: true
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


def train_and_resume(
    folder: Path, data_dir: Path, kind: str, spec: dict, objective: dict, augmentations: dict
) -> RunDir:
    """A run of RECIPE on 72 real radiographs, interrupted after its last checkpoint
    (the step's export removed) and resumed: the step is not done until it exports again."""
    write_small_data(folder, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    recipe = folder / "timm.yaml"
    recipe.write_text(
        RECIPE.format(
            kind=kind,
            root=folder,
            backbone=json.dumps(spec),
            objective=json.dumps(objective),
            augmentations=json.dumps(augmentations),
        )
    )
    runs = folder / "runs"
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    run = RunDir(next((runs / f"timm-{kind}").iterdir()))
    step = run.step("target")
    step.backbone_weights.unlink()
    step.backbone_meta.unlink()
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--resume", str(run.path)])
    assert result.exit_code == 0, result.output
    assert step.is_done()
    return run


def predicts_and_exports_onnx(run: RunDir, spec: dict) -> tuple[Predictor, torch.Tensor]:
    """``sslmed predict`` answers probabilities summing to 1 and the ONNX export agrees
    with the predictor; returns the predictor and one real test image's model input."""
    predictor = Predictor(run.path, device="cpu")
    assert predictor.meta["backbone"] == spec
    image = sorted((run.path.parents[2] / "small" / "images").glob("test_*.png"))[0]
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
    return predictor, x


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_trains_resumes_exports_predicts_on_real_data(kind: str, data_dir: Path, tmp_path: Path) -> None:
    spec = CNN if kind == "cnn" else VIT
    run = train_and_resume(tmp_path, data_dir, kind, spec, {"name": "simclr"}, {"name": "simclr"})
    predictor, x = predicts_and_exports_onnx(run, spec)
    cam = grad_cam(predictor.model, x)
    assert cam.cam is None and "not shown" in cam.caption() and cam.probabilities.shape == (2,)
    if kind == "cnn":  # 32 px leaves resnet10t's stages under 4x4 positions: no map, and the caption says why
        assert "4×4 positions" in cam.caption()
    else:  # timm's ViT pools its class token: no map, and the caption says why
        assert "global_pool: avg" in cam.caption()


#: the ViT for DINO: multi-crop's local views are smaller than the global ones
DINO_VIT = {**VIT, "args": {**VIT["args"], "dynamic_img_size": True}}
DINO = {"name": "dino", "hidden_dim": 32, "bottleneck_dim": 16, "output_dim": 64}
MULTICROP = {"name": "multicrop", "local_views": 2, "local_size": 16}  # a multiple of the patch (8)


@pytest.fixture(scope="module")
def dino_vit_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> RunDir:
    """The small timm ViT trained with DINO and multi-crop (2 global views at 32 px, 2 local at 16), resumed."""
    return train_and_resume(tmp_path_factory.mktemp("dino-vit"), data_dir, "vit-dino", DINO_VIT, DINO, MULTICROP)


def test_vit_trains_with_dino_and_multicrop_and_exports_the_teacher(dino_vit_run: RunDir) -> None:
    from safetensors.torch import load_file

    from sslmed.training.engine import load_checkpoint

    step = dino_vit_run.step("target")
    assert json.loads(step.backbone_meta.read_text())["exported_backbone"] == "teacher"
    exported = load_file(str(step.backbone_weights))
    state = load_checkpoint(step.last_checkpoint)["state_dict"]
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, state[f"teacher_backbone.{name}"], rtol=0, atol=0)
    assert any(not torch.equal(t, state[f"backbone.{n}"]) for n, t in exported.items()), "the student was exported"
    predictor, _x = predicts_and_exports_onnx(dino_vit_run, DINO_VIT)
    for name, tensor in predictor.model.backbone.state_dict().items():  # the served model has the teacher too
        torch.testing.assert_close(tensor, exported[name], rtol=0, atol=0)


def test_vit_input_sizes_work_or_name_the_key() -> None:
    registry = get_registry()
    fixed = registry.build("backbone", VIT, in_channels=1).eval()
    with pytest.raises(
        UsageError, match=r"a 16×16 px input, but it takes 32×32 only \(args.img_size\).*dynamic_img_size"
    ):
        fixed(torch.randn(1, 1, 16, 16))
    dynamic = registry.build("backbone", DINO_VIT, in_channels=1).eval()
    assert dynamic.forward_features(torch.randn(1, 1, 16, 16)).shape[-2:] == (2, 2)
    with pytest.raises(
        UsageError,
        match=r"14×14 px input is not a multiple of its patch_size 8; give multicrop a local_size that is \(e.g. 16\)",
    ):
        dynamic(torch.randn(1, 1, 14, 14))  # multicrop's default local_size at 32 px: 3/7 of it
    padded = registry.build("backbone", {**DINO_VIT, "args": {**DINO_VIT["args"], "dynamic_img_pad": True}})
    x = torch.randn(2, 1, 14, 14)
    assert padded.eval().forward_features(x).shape == (2, padded.feature_dim, 2, 2)  # padded up to 2×2 patches
    assert padded(x).shape == (2, padded.feature_dim)


# gradio's queue calls a pandas option that pandas 3 deprecates; not ours to fix
@pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
def test_serves_a_timm_run_over_http(dino_vit_run: RunDir) -> None:
    """The web service classifies a real image of a timm run through POST /api/classify;
    /explain gives no map for a class-token ViT and its caption says why."""
    gradio_client = pytest.importorskip("gradio_client")
    import urllib.request

    from sslmed.serving.web.page import build_demo
    from sslmed.testing.web import launched_demo

    predictor = Predictor(dino_vit_run.path, device="cpu")
    image = sorted((dino_vit_run.path.parents[2] / "small" / "images").glob("test_*.png"))[0]
    demo = build_demo(predictor, examples_dir=None)
    with launched_demo(demo, api=True) as url:
        request = urllib.request.Request(f"{url}api/classify?name={image.name}", data=image.read_bytes())
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        client = gradio_client.Client(url, verbose=False)
        try:
            *_images, caption = client.predict(gradio_client.handle_file(str(image)), api_name="/explain")
        finally:
            client.close()
    assert set(answer["probabilities"]) == set(predictor.classes) and answer["label"] in predictor.classes
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    expected = predictor.analyse([image])[0].probabilities
    assert answer["probabilities"] == pytest.approx(expected, abs=1e-5)
    assert caption.startswith("**Grad-CAM not shown:**") and "global_pool: avg" in caption
