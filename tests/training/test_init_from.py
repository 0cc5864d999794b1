"""``init_from`` given a path: a step starts from another run's backbone export."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from sslmed.app.runner import run_recipe
from sslmed.artifacts.exports import save_backbone
from sslmed.core import plugins
from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.hookspecs import hookimpl
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import load_recipe
from sslmed.default_plugins.backbones import ResNetBackbone
from sslmed.default_plugins.simclr import SimCLRArgs, SimCLRMethod

STARTS: list[dict[str, torch.Tensor]] = []  # the backbone weights each recording fit started from

ONE_STEP = """\
data_root: {data}
name: from_elsewhere
data:
  covid3: {{name: csv, path: covid3, patient_column: patient_id}}
steps:
  - name: target
    data: covid3
    init_from: {init}
    backbone: {{name: {backbone}, small_input: true}}
    objective: {{name: {objective}}}
    augmentations: [{{name: simclr}}]
    image_size: 16
    batch_size: 16
    max_steps: 1
    accelerator: cpu
evaluation:
  data: covid3
  probes: [linear]
  baselines: []
"""


class _Recording(SimCLRMethod):
    def on_train_start(self):
        STARTS.append({k: v.detach().clone() for k, v in self.backbone.state_dict().items()})


class _RecordingPlugin:
    @hookimpl
    def register_objectives(self, register):
        register("recording_simclr", lambda args, *, backbone, **kw: _Recording(backbone, args), args=SimCLRArgs)


@pytest.fixture
def recording():
    STARTS.clear()
    plugins.register_plugin(_RecordingPlugin(), name="recording_init")
    yield STARTS
    plugins.unregister_plugin("recording_init")


def _recipe(tmp_path, data_dir, init, backbone="resnet18", objective="simclr"):
    path = tmp_path / "one.yaml"
    path.write_text(ONE_STEP.format(data=data_dir, init=init, backbone=backbone, objective=objective))
    return path


@pytest.mark.slow
def test_step_starts_from_the_export_of_another_run(trained_run, tmp_path, data_dir, recording):
    source = trained_run / "steps" / "corpus"
    result = run_recipe(
        _recipe(tmp_path, data_dir, source, objective="recording_simclr"), runs_dir=tmp_path / "runs", progress=False
    )
    exported = load_file(str(source / "backbone.safetensors"))
    assert len(recording) == 1
    for key, value in exported.items():
        assert torch.equal(value, recording[0][key]), key
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    entry = manifest["init_from"]["target"]
    assert entry["sha256"] == hashlib.sha256((source / "backbone.safetensors").read_bytes()).hexdigest()
    assert entry["path"] == str(source.resolve())
    assert entry["step"] == "corpus" and entry["backbone"] == {"name": "resnet18", "small_input": True}
    assert (result.run_dir / "results.json").is_file()


def test_the_weights_file_itself_is_accepted(tmp_path, data_dir):
    save_backbone(tmp_path / "export", ResNetBackbone("resnet18", small_input=True), _meta("resnet18"))
    from sslmed.training.init_from import check_external

    found = check_external(str(tmp_path / "export" / "backbone.safetensors"), _meta("resnet18"))
    assert found.path == (tmp_path / "export").resolve() and len(found.sha256) == 64


def _meta(name: str, channels: int = 1) -> dict:
    return {"backbone": {"name": name, "small_input": True}, "in_channels": channels}


def test_an_export_of_another_architecture_is_refused_before_anything_runs(tmp_path, data_dir):
    save_backbone(tmp_path / "r34", ResNetBackbone("resnet34", small_input=True), _meta("resnet34"))
    with pytest.raises(
        UsageError, match=r"does not fit this step: it has architecture .*resnet34.*this step: .*resnet18"
    ):
        run_recipe(_recipe(tmp_path, data_dir, tmp_path / "r34"), runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # nothing written


def test_an_export_with_other_channels_is_refused(tmp_path):
    from sslmed.training.init_from import check_external

    save_backbone(tmp_path / "rgb", ResNetBackbone("resnet18", in_channels=3, small_input=True), _meta("resnet18", 3))
    with pytest.raises(UsageError, match=r"in_channels=3 \(this step: 1\)"):
        check_external(str(tmp_path / "rgb"), _meta("resnet18"))


def test_a_folder_without_an_export_says_what_to_give(tmp_path):
    from sslmed.training.init_from import check_external

    (tmp_path / "run" / "steps" / "corpus").mkdir(parents=True)
    (tmp_path / "run" / "steps" / "corpus" / "backbone.json").write_text("{}")
    with pytest.raises(UsageError, match=r"not a backbone export .*e\.g\. .*run/steps/corpus"):
        check_external(str(tmp_path / "run"), _meta("resnet18"))
    with pytest.raises(UsageError, match="no such file or folder"):
        check_external(str(tmp_path / "nowhere"), _meta("resnet18"))


def test_recipe_takes_a_path_but_still_catches_a_misspelt_step(tmp_path, data_dir):
    registry = get_registry()
    recipe = load_recipe(_recipe(tmp_path, data_dir, "runs/x/steps/corpus"), registry)
    assert recipe.steps[0].init_from == "runs/x/steps/corpus"
    with pytest.raises(RecipeError, match="'corpsu' is not an earlier step .* nor a path"):
        load_recipe(_recipe(tmp_path, data_dir, "corpsu"), registry)
