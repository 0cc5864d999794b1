"""``snapshot_every_n_epochs``: backbone exports along the way, for accuracy-against-budget curves."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from sslmed.app.runner import run_recipe
from sslmed.training.init_from import check_external

RECIPE = """\
data_root: {data}
name: snapshots
data:
  # 4% of covid3's images per epoch: a few optimiser steps each
  covid3: {{name: csv, path: covid3, patient_column: patient_id, test_size: 0.48, val_size: 0.48}}
steps:
  - name: corpus
    data: covid3
    backbone: {{name: resnet18, small_input: true}}
    objective: {{name: simclr}}
    augmentations: [{{name: simclr}}]
    image_size: 16
    batch_size: 16
    epochs: 4
    snapshot_every_n_epochs: {every}
    accelerator: cpu
"""


def _run(tmp_path, data_dir, every: int):
    recipe = tmp_path / f"every{every}.yaml"
    recipe.write_text(RECIPE.format(data=data_dir, every=every))
    return run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False).run_dir / "steps" / "corpus"


def test_every_nth_epoch_is_exported_and_the_last_one_is_the_final_backbone(tmp_path, data_dir):
    step = _run(tmp_path, data_dir, every=2)
    assert sorted(p.name for p in (step / "snapshots").iterdir()) == ["epoch002", "epoch004"]
    final = load_file(str(step / "backbone.safetensors"))
    meta = json.loads((step / "backbone.json").read_text())
    steps_per_epoch = meta["global_step"] // 4
    for epoch in (2, 4):
        folder = step / "snapshots" / f"epoch{epoch:03d}"
        snap = json.loads((folder / "backbone.json").read_text())
        assert snap["epochs"] == epoch and snap["global_step"] == epoch * steps_per_epoch
        assert snap["backbone"] == meta["backbone"] and snap["exported_backbone"] == meta["exported_backbone"]
        assert check_external(str(folder), meta).path == folder.resolve()  # other steps can start from it
    last = load_file(str(step / "snapshots" / "epoch004" / "backbone.safetensors"))
    halfway = load_file(str(step / "snapshots" / "epoch002" / "backbone.safetensors"))
    assert all(torch.equal(last[k], final[k]) for k in final)
    assert not all(torch.equal(halfway[k], final[k]) for k in final)


def test_without_the_setting_no_snapshot_is_written(tmp_path, data_dir):
    recipe = tmp_path / "plain.yaml"
    recipe.write_text(RECIPE.format(data=data_dir, every=1).replace("    snapshot_every_n_epochs: 1\n", ""))
    step = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False).run_dir / "steps" / "corpus"
    assert (step / "backbone.safetensors").is_file() and not (step / "snapshots").exists()
