"""Multi-step runs: init_from hands step 1's weights to step 2; interrupted runs resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sslmed.app.runner import run_recipe
from sslmed.core import plugins
from sslmed.core.errors import CheckpointError, UsageError
from sslmed.core.hookspecs import hookimpl
from sslmed.default_plugins.simclr import SimCLRArgs, SimCLRMethod

SEEN: list[dict] = []  # what each recording method saw when its training started
FAIL_AT_STEP = {"step": -1, "fit": 2}  # crash at this global step of the n-th fit


class RecordingSimCLR(SimCLRMethod):
    """SimCLR that records its starting weights and step, and can fail on purpose."""

    def on_train_start(self):
        SEEN.append(
            {
                "state": {k: v.detach().clone() for k, v in self.backbone.state_dict().items()},
                "global_step": self.trainer.global_step,
            }
        )

    def training_step(self, batch, index):
        if self.global_step == FAIL_AT_STEP["step"] and len(SEEN) == FAIL_AT_STEP["fit"]:
            raise RuntimeError("simulated crash")
        return super().training_step(batch, index)


class RecordingPlugin:
    @hookimpl
    def register_objectives(self, register):
        register("recording_simclr", lambda args, *, backbone, **kw: RecordingSimCLR(backbone, args), args=SimCLRArgs)


@pytest.fixture
def recording():
    SEEN.clear()
    FAIL_AT_STEP["step"] = -1
    plugins.register_plugin(RecordingPlugin(), name="recording")
    yield SEEN
    plugins.unregister_plugin("recording")
    FAIL_AT_STEP["step"] = -1


@pytest.mark.slow
def test_step_two_starts_from_step_one_weights(tiny_recipe, tmp_path, recording):
    result = run_recipe(tiny_recipe("recording_simclr"), runs_dir=tmp_path / "runs", progress=False)
    exported = load_file(str(result.run_dir / "steps" / "corpus" / "backbone.safetensors"))
    assert len(recording) == 2
    step_two_start = recording[1]["state"]
    assert exported.keys() == step_two_start.keys()
    for key, value in exported.items():
        assert torch.equal(value, step_two_start[key]), key
    # and step 1 itself did not start from those weights (they were learned)
    assert any(not torch.equal(exported[k], recording[0]["state"][k]) for k in exported if k.endswith("weight"))
    results = json.loads((result.run_dir / "results.json").read_text())
    assert results["rows"][0]["model"] == "sslmed:target"
    assert (result.run_dir / "model" / "model.safetensors").is_file()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert set(manifest["data"]) == {"pneumoniamnist", "covid3"}
    assert len(manifest["data"]["covid3"]["fingerprint"]) == 16


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_recipe, tmp_path, recording):
    recipe = tiny_recipe("recording_simclr", steps=4)
    runs = tmp_path / "runs"
    FAIL_AT_STEP["step"] = 3  # step 3 of "target" crashes, within its first epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_recipe(recipe, runs_dir=runs, progress=False)
    run_dir = next((runs / "tiny").iterdir())
    assert (run_dir / "steps" / "corpus" / "backbone.safetensors").is_file()
    # no epoch of "target" completed: there is no checkpoint to resume from
    assert not list((run_dir / "steps" / "target" / "checkpoints").glob("*.ckpt"))
    assert not (run_dir / "steps" / "target" / "backbone.safetensors").exists()
    assert not (run_dir / "results.json").exists()

    # a changed recipe may not continue that run
    with pytest.raises(UsageError, match="differs"):
        run_recipe(recipe, overrides=("steps.1.epochs=3",), runs_dir=runs, resume="latest")

    # a run started by an older sslmed lacks settings added since: they take their defaults
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    for step in saved["steps"]:
        del step["augment_on"]
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    FAIL_AT_STEP["step"] = -1
    recording.clear()
    result = run_recipe(recipe, runs_dir=runs, resume="latest", progress=False)
    assert result.run_dir == run_dir
    # corpus skipped; target restarts its unfinished first epoch (resume is at epoch boundaries)
    assert [seen["global_step"] for seen in recording] == [0]
    meta = json.loads((run_dir / "steps" / "target" / "backbone.json").read_text())
    assert meta["global_step"] == 4
    assert (run_dir / "results.json").is_file()


def test_backbone_from_another_model_is_refused(tmp_path):
    from sslmed.artifacts.exports import load_backbone_weights, save_backbone
    from sslmed.default_plugins.backbones import ResNetBackbone

    save_backbone(tmp_path, ResNetBackbone("resnet34"), {"backbone": {"name": "resnet34"}, "in_channels": 1})
    with pytest.raises(CheckpointError, match="from another model: backbone is"):
        load_backbone_weights(
            tmp_path, ResNetBackbone("resnet18"), expect={"backbone": {"name": "resnet18"}, "in_channels": 1}
        )
    with pytest.raises(CheckpointError, match="do not fit this backbone"):
        load_backbone_weights(tmp_path, ResNetBackbone("resnet18"))


@pytest.mark.slow
def test_named_run_folder_is_used_and_continued(tiny_recipe, tmp_path, recording):
    recipe = tiny_recipe("recording_simclr", steps=1)
    folder = tmp_path / "shared" / "run-a"
    first = run_recipe(recipe, runs_dir=tmp_path / "runs", run_dir=folder, progress=False)
    assert first.run_dir == folder and (folder / "results.json").is_file()
    assert not (tmp_path / "runs").exists()
    recording.clear()
    again = run_recipe(recipe, runs_dir=tmp_path / "runs", run_dir=folder, progress=False)
    assert again.run_dir == folder and recording == []  # every step already done
    with pytest.raises(UsageError, match="differs"):
        run_recipe(recipe, overrides=("steps.0.epochs=2",), run_dir=folder)
