"""The objectives a user compares (issue 19): registered with their papers, losses and
gradients, momentum encoders, reconstruction on top of any of them, multi-crop views."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from methods_support import EXPORTED, METHODS, build, objective_spec, random_views
from scipy import stats
from torchvision.transforms import v2

from sslmed.app.cli import cli
from sslmed.app.prepare import load_recipe_file
from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.training.engine import build_method

REPO = Path(__file__).resolve().parents[2]
NAMES = sorted({objective_spec(m)["name"] for m in METHODS})
PAPERS = {
    "byol": "Grill et al. 2020",
    "moco": "Chen et al. 2020",
    "simsiam": "Chen and He 2021",
    "fastsiam": "Pototzky et al. 2022",
    "dino": "Caron et al. 2021",
    "vicreg": "Bardes, Ponce and LeCun 2022",
    "barlow_twins": "Zbontar et al. 2021",
}


@pytest.mark.parametrize("name", NAMES)
def test_each_method_is_a_default_plugin_citing_its_paper(name: str):
    component = get_registry().get("objective", name)
    assert component.plugin.startswith("sslmed.default_plugins.")
    assert PAPERS[name] in importlib.import_module(component.factory.__module__).__doc__
    result = CliRunner().invoke(cli, ["info", name])
    assert result.exit_code == 0, result.output
    assert name in result.output
    # extra="forbid": a misspelt key is an error
    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        component.parse_args({"not_a_key": 1})


@pytest.mark.parametrize("method", METHODS)
def test_loss_and_gradients_reach_the_student_only(method: str):
    model = build(method, tiny=True)
    loss = model.compute_losses({"views": random_views(method)})["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    for _student, teacher in model.momentum_pairs:
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    exported = model.export_backbone()
    assert model.exported_backbone == EXPORTED[method]
    assert (exported is model.backbone) == (EXPORTED[method] == "student")


@pytest.mark.parametrize("method", ["byol", "moco", "dino"])
def test_momentum_encoder_is_an_ema_on_a_cosine_schedule(method: str):
    model = build(method, tiny=True)
    student, teacher = model.momentum_pairs[0]
    assert model.momentum_at(0) == pytest.approx(model.momentum)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in teacher.parameters()]
    model.update_momentum_encoders(0)
    m = model.momentum
    for old, new, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, m * old + (1 - m) * s)
    # init_from replaces the student: the teacher restarts from it
    model.backbone_initialised()
    for new, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, s)
    # no teacher parameter is optimised
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not trainable & {id(p) for _s, t in model.momentum_pairs for p in t.parameters()}


def _step(objective: dict, reconstruction: dict | None, data_dir: Path):
    """The first step of recipes/simclr.yaml with another objective (and reconstruction),
    on a ResNet-18 with its ImageNet stem at 32 px (a 1×1 last feature map: cheap)."""
    overrides = [f"defaults.objective={objective}", "defaults.backbone.small_input=false", "defaults.image_size=32"]
    if reconstruction is not None:
        overrides.append(f"defaults.reconstruction={reconstruction}")
    recipe, registry = load_recipe_file(REPO / "recipes" / "simclr.yaml", tuple(overrides))
    return recipe.steps[0], registry


@pytest.mark.parametrize("method", METHODS)
def test_reconstruction_composes_with_every_objective(method: str, data_dir: Path):
    spec = objective_spec(method)
    step, registry = _step(spec, {"weight": 0.5, "decoder": {"name": "resnet_decoder", "width": 16}}, data_dir)
    model = build_method(step, registry)
    assert step.reconstruction is not None and model.decoder is not None
    views = random_views(method, size=32)
    clean = [v + 1 for v in views]
    batch = {"views": views, "clean": clean}
    model._encoded = []
    objective = model.compute_losses(batch)["loss"]
    reconstruction = model.reconstruction_loss(batch)
    assert reconstruction > 0
    exported = model.extra_exports()["decoder"]
    assert exported[0] is model.decoder and exported[1]["spec"]["width"] == 16
    assert torch.isfinite(objective + 0.5 * reconstruction)


def test_simclr_plus_reconstruction_is_crsm(data_dir: Path):
    """crsm keeps its results: simclr + the step's reconstruction builds the same weights
    from the same seed and computes the same losses."""
    decoder = {"name": "resnet_decoder", "width": 16}
    crsm_step, registry = _step({"name": "crsm", "decoder": decoder, "reconstruction_weight": 0.7}, None, data_dir)
    composed_step, _ = _step({"name": "simclr"}, {"weight": 0.7, "decoder": decoder}, data_dir)
    torch.manual_seed(0)
    crsm = build_method(crsm_step, registry)
    torch.manual_seed(0)
    composed = build_method(composed_step, registry)
    a, b = crsm.state_dict(), composed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    views = [torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    batch = {"views": views, "clean": [v.clamp(-1, 1) for v in views]}
    expected = crsm.compute_losses(batch)
    composed._encoded = []
    objective = composed.compute_losses(batch)["loss"]
    reconstruction = composed.reconstruction_loss(batch)
    torch.testing.assert_close(objective, expected["contrastive"])
    torch.testing.assert_close(reconstruction, expected["reconstruction"])
    torch.testing.assert_close(objective + 0.7 * reconstruction, expected["loss"])
    # crsm has a decoder of its own: adding another is refused
    both, _ = _step({"name": "crsm"}, {"weight": 1.0}, data_dir)
    with pytest.raises(UsageError, match="has a decoder of its own"):
        build_method(both, registry)


@pytest.mark.parametrize("method", ["byol", "dino", "barlow_twins"])
def test_recipe_errors_name_the_methods_own_keys(method: str, data_dir: Path):
    name = objective_spec(method)["name"]
    key = {"byol": "momentum", "dino": "teacher_temp", "barlow_twins": "redundancy_weight"}[method]
    with pytest.raises(RecipeError) as error:
        load_recipe_file(
            REPO / "recipes" / f"{name}.yaml", (f"steps.0.objective.{key}=-1", "steps.0.objective.momentm=1")
        )
    text = str(error.value)
    assert f"objective.{key}" in text and "objective.momentm" in text, text
    with pytest.raises(RecipeError, match=r"reconstruction\.decoder\.name.*unknown decoder 'resnet_decodr'"):
        load_recipe_file(
            REPO / "recipes" / f"{name}.yaml", ("steps.0.reconstruction={decoder: {name: resnet_decodr}}",)
        )


# ---- multi-crop views: the CPU path (lightly, per image) and the device path (batched)
N = 3000
ALPHA = 0.001


def _crops(args: dict, size: int = 64):
    from sslmed.default_plugins.multicrop import MultiCropArgs, build_multicrop_views

    transform = build_multicrop_views(MultiCropArgs(**args), image_size=size, in_channels=1)
    return [
        next(t for t in view.transform.transforms if isinstance(t, v2.RandomResizedCrop))
        for view in transform.transforms
    ]


def test_multicrop_views_have_their_sizes_on_both_paths():
    from PIL import Image

    from sslmed.training.transforms import build_batched_pipeline, build_view_pipeline

    registry = get_registry()
    specs = [{"name": "multicrop", "local_views": 3, "local_size": 12}, {"name": "mdre"}]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))
    cpu = build_view_pipeline(specs, registry, 32, 1)(image)
    batched = build_batched_pipeline(specs, registry, 32, 1)
    device = batched(torch.randint(0, 256, (5, 1, 40, 40), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in cpu["views"]] == [(1, 32, 32)] * 2 + [(1, 12, 12)] * 3
    assert [tuple(v.shape) for v in device["views"]] == [(5, 1, 32, 32)] * 2 + [(5, 1, 12, 12)] * 3
    assert len(cpu["clean"]) == len(device["clean"]) == 5


@pytest.mark.parametrize("which", ["global", "local"])
def test_multicrop_crop_scales_match_between_the_paths(which: str):
    from sslmed.default_plugins.multicrop import BatchedMultiCropViews, MultiCropArgs

    args = {"min_scale": 0.4, "local_min_scale": 0.05, "local_views": 2}
    crops = _crops(args)
    crop = crops[0] if which == "global" else crops[-1]
    assert crop.scale == ((0.4, 1.0) if which == "global" else (0.05, 0.4))
    torch.manual_seed(0)
    reference = [crop.make_params([torch.zeros(1, 64, 64)]) for _ in range(N)]
    ref_scale = np.array([p["height"] * p["width"] / 64**2 for p in reference])
    views = BatchedMultiCropViews(MultiCropArgs(**args), 64, 1)
    sampler = views.global_view if which == "global" else views.local_view
    boxes = sampler.sample_params(N, 64, 64, torch.Generator().manual_seed(0))["boxes"]
    scale = (boxes[:, 2] * boxes[:, 3] / 64**2).numpy()
    assert stats.ks_2samp(ref_scale, scale).pvalue > ALPHA
    assert (
        stats.ks_2samp(
            np.array([p["width"] / p["height"] for p in reference]), (boxes[:, 3] / boxes[:, 2]).numpy()
        ).pvalue
        > ALPHA
    )
    if which == "local":
        assert scale.max() <= 0.4 + 0.05 and scale.min() >= 0.02
