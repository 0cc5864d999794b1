"""The reconstruction decoder and the CRSM objective, on real data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from sslmed.artifacts.exports import load_backbone_weights, read_backbone_meta
from sslmed.core.errors import UsageError
from sslmed.core.plugins import get_registry
from sslmed.default_plugins.crsm import CRSMMethod
from sslmed.training.engine import backbone_identity

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("small_input,sizes", [(True, (28, 50)), (False, (28, 100, 224))])
@torch.no_grad()
def test_decoder_output_has_the_input_shape(arch: str, small_input: bool, sizes: tuple[int, ...]):
    registry = get_registry()
    for channels in (1, 3) if arch == "resnet18" else (1,):
        backbone = registry.build("backbone", {"name": arch, "small_input": small_input}, in_channels=channels).eval()
        for size in sizes:
            decoder = registry.build(
                "decoder",
                {"name": "resnet_decoder", "width": 64},
                backbone=backbone,
                image_size=size,
                out_channels=channels,
            ).eval()
            x = torch.randn(1, channels, size, size)
            assert decoder(backbone.forward_features(x)).shape == x.shape, (arch, small_input, size, channels)


def test_decoder_refuses_an_unsupported_backbone():
    class Odd(torch.nn.Module):
        feature_dim, stride = 64, 12

        def forward_features(self, x):
            return x

    with pytest.raises(UsageError, match="stride 12 is not a power of two"):
        get_registry().build("decoder", {"name": "resnet_decoder"}, backbone=Odd(), image_size=32, out_channels=1)
    with pytest.raises(UsageError, match="does not support backbone Linear"):
        get_registry().build(
            "decoder", {"name": "resnet_decoder"}, backbone=torch.nn.Linear(2, 2), image_size=32, out_channels=1
        )


def test_crsm_losses_and_warmup():
    registry = get_registry()
    backbone = registry.build("backbone", {"name": "resnet18", "small_input": True}, in_channels=1)
    method = registry.build(
        "objective",
        {"name": "crsm", "warmup_steps": 10, "reconstruction_weight": 2.0},
        backbone=backbone,
        build=registry.build,
        image_size=16,
        in_channels=1,
    )
    assert isinstance(method, CRSMMethod)
    assert method.reconstruction_weight() == pytest.approx(0.2)  # step 0 of a 10-step warm-up
    views = [torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16)]
    losses = method.compute_losses({"views": views, "clean": [v + 1 for v in views]})
    assert set(losses) == {"loss", "contrastive", "reconstruction"}
    assert losses["loss"].item() == pytest.approx(
        losses["contrastive"].item() + 0.2 * losses["reconstruction"].item(), rel=1e-5
    )
    assert method.compute_losses({"views": views})["reconstruction"] > 0  # no clean views: reconstruct the views
    exported = method.extra_exports()["decoder"]
    assert exported[0] is method.decoder
    assert exported[1] == {"kind": "decoder", "spec": {"name": "resnet_decoder"}, "image_size": 16, "out_channels": 1}


def test_crsm_with_unknown_decoder_fails_validation(data_dir: Path):
    from sslmed.app.prepare import load_recipe_file
    from sslmed.core.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown decoder 'resnet_decodr'"):
        load_recipe_file(REPO / "recipes" / "crsm.yaml", ("defaults.objective.decoder.name=resnet_decodr",))


def _column(rows: list[dict], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r.get(name) not in (None, "")]


@pytest.mark.slow
def test_crsm_multistep_trains_logs_exports_and_loads(data_dir: Path, tmp_path: Path, monkeypatch):
    """The shipped multi-step recipe, shrunk: step 1 on the pooled corpus, step 2 from it."""
    from sslmed.app.prepare import load_recipe_file
    from sslmed.app.runner import run_recipe
    from sslmed.serving.predict import Predictor

    monkeypatch.setenv("SSLMED_DATA", str(data_dir))
    overrides = (
        "defaults.image_size=16",
        "defaults.batch_size=32",
        "defaults.accelerator=cpu",
        "defaults.log_every_n_steps=1",
        "defaults.checkpoint_every_n_steps=100",
        "defaults.objective.warmup_steps=0",
        "defaults.objective.decoder.width=64",
        "defaults.optimizer.lr=0.003",
        "steps.0.max_steps=16",  # enough steps for the falling loss to beat batch-to-batch noise
        "steps.1.max_steps=2",
        # a quick probe: fit on covid3's 113 validation images, score on its test split
        "evaluation.probes=[linear]",
        "evaluation.baselines=[]",
        "evaluation.train_split=val",
    )
    result = run_recipe(REPO / "recipes" / "crsm_multistep.yaml", overrides, runs_dir=tmp_path / "runs", progress=False)
    corpus_dir = result.run_dir / "steps" / "corpus"

    # both loss terms logged per step; the loss goes down on real images
    with open(corpus_dir / "logs" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    loss, contrastive, reconstruction = (
        _column(rows, f"train/{n}_step") for n in ("loss", "contrastive", "reconstruction")
    )
    assert len(loss) == len(contrastive) == len(reconstruction) == 16
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4, loss
    assert sum(reconstruction[-4:]) / 4 < sum(reconstruction[:4]) / 4, reconstruction

    # the backbone export is a normal backbone: init_from and the probe load it
    recipe, registry = load_recipe_file(REPO / "recipes" / "crsm_multistep.yaml", overrides)
    target = recipe.step("target")
    fresh = registry.build("backbone", target.backbone.spec(), in_channels=target.in_channels)
    load_backbone_weights(corpus_dir, fresh, expect=backbone_identity(target))
    assert read_backbone_meta(result.run_dir / "steps" / "target")["extras"]["decoder"]["kind"] == "decoder"
    assert any(r["model"] == "sslmed:target" and r["probe"] == "linear" for r in result.rows)

    # the model export carries the decoder, and predict rebuilds it
    predictor = Predictor(result.run_dir)
    image = predictor.load(next((data_dir / "covid3" / "images").rglob("*.png")))
    x = predictor.model_input(image)
    with torch.no_grad():
        backbone = predictor.model.backbone
        reconstruction_image = predictor.extras["decoder"](backbone.forward_features(x.to(predictor.device)))
    assert reconstruction_image.shape == x.shape
    assert set(predictor.predict_images([image])[0]) == set(recipe_classes(result.run_dir))


def recipe_classes(run_dir: Path) -> list[str]:
    import json

    return json.loads((run_dir / "results.json").read_text())["classes"]
