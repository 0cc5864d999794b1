"""A tiny real-data run for the resume and fault-injection tests, and the child process
that is killed (SIGKILL) at a chosen point of it.

The data: 48 training and 24 test radiographs of PneumoniaMNIST (28 px), written as PNG
files with a CSV, so one epoch is 3 batches and the whole run takes seconds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

RECIPE = """\
name: faulty
data_root: {root}
data:
  small:
    name: csv
    path: small
    split_column: split
defaults:
  backbone: {{name: resnet18, small_input: true}}
  objective: {{name: simclr}}
  augmentations: [{{name: simclr}}]
  image_size: 16
  batch_size: 16
  accelerator: cpu
  log_every_n_steps: 1
steps:
  - name: first
    data: small
    epochs: 3
    keep_checkpoints: true
  - name: second
    data: small
    init_from: first
    epochs: 2
evaluation:
  data: small
  probes: [linear]
  baselines: [random_init]
"""


def write_small_data(root: Path, npz: Path) -> Path:
    """48 train + 24 test images (balanced) from the real PneumoniaMNIST file; returns the recipe."""
    arrays = np.load(npz)
    folder = root / "small"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, source, count in (("train", "train", 48), ("test", "test", 24)):
        labels = arrays[f"{source}_labels"].ravel()
        for label in (0, 1):
            for index in np.flatnonzero(labels == label)[: count // 2]:
                name = f"{split}_{index}.png"
                Image.fromarray(arrays[f"{source}_images"][index]).save(folder / "images" / name)
                rows.append({"path": name, "label": ["normal", "pneumonia"][label], "split": split})
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    recipe = root / "faulty.yaml"
    recipe.write_text(RECIPE.format(root=root))
    return recipe


def outcome(run_dir: Path) -> dict[str, Any]:
    """What must not depend on interruptions: exported weights and the results rows."""
    weights = {step: load_file(str(run_dir / "steps" / step / "backbone.safetensors")) for step in ("first", "second")}
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    return {"weights": weights, "rows": rows}


def assert_same_outcome(a: dict[str, Any], b: dict[str, Any]) -> None:
    for step, tensors in a["weights"].items():
        assert tensors.keys() == b["weights"][step].keys()
        for key, value in tensors.items():
            torch.testing.assert_close(value, b["weights"][step][key], rtol=1e-5, atol=1e-6, msg=f"{step} {key}")
    strip = [{k: v for k, v in row.items() if k != "test_predictions"} for row in a["rows"]]
    other = [{k: v for k, v in row.items() if k != "test_predictions"} for row in b["rows"]]
    assert strip == other


def assert_nothing_truncated(run_dir: Path) -> None:
    """Every file of the run folder is whole: checkpoints load, safetensors load, JSON parses,
    and no temporary file is left where a later reader could mistake it for output."""
    from sslmed.training.engine import load_checkpoint

    for path in run_dir.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.endswith(".tmp"), f"temporary file left: {path}"
        if path.suffix == ".ckpt":
            load_checkpoint(path)
        elif path.suffix == ".safetensors":
            load_file(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())


# ------------------------------------------------------------------ child process


def _kill() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def run_and_kill(recipe: str, runs_dir: str, point: str, when: int) -> None:
    """Run the recipe (resuming the run under ``runs_dir`` if there is one); SIGKILL this
    process at ``point`` (the ``when``-th time it is reached).

    Points: ``batch`` (a training batch, mid-epoch), ``checkpoint`` (half-way through
    writing a checkpoint's temporary file), ``export`` (a backbone export written but
    not yet renamed), ``evaluation`` (while probing). And ``sigterm``: the run goes
    through the command line (``sslmed -q run``) and this process sends itself SIGTERM
    at a training batch, as a scheduler stopping the job does.
    """
    if point == "sigterm":
        from sslmed.app.cli import cli
        from sslmed.default_plugins.simclr import SimCLRMethod

        original = SimCLRMethod.training_step
        batches = {"n": 0}

        def terminated_step(self: Any, batch: Any, index: int) -> Any:
            batches["n"] += 1
            if batches["n"] == when:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self, batch, index)

        SimCLRMethod.training_step = terminated_step
        cli(["-q", "run", recipe, "--runs-dir", runs_dir])  # exits with the command's status
    import sslmed.core.files
    import sslmed.evaluation.evaluate
    import sslmed.training.engine
    from sslmed.app.runner import run_recipe
    from sslmed.default_plugins.simclr import SimCLRMethod

    count = {"n": 0}

    def reached() -> bool:
        count["n"] += 1
        return count["n"] == when

    if point == "batch":
        original_step = SimCLRMethod.training_step

        def training_step(self: Any, batch: Any, index: int) -> Any:
            if reached():
                _kill()
            return original_step(self, batch, index)

        SimCLRMethod.training_step = training_step
    elif point == "checkpoint":
        original_save = torch.save

        def half_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
            if hasattr(f, "write") and isinstance(obj, dict) and "loops" in obj and reached():
                import io

                buffer = io.BytesIO()
                original_save(obj, buffer)
                f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                f.flush()
                _kill()
            return original_save(obj, f, *args, **kwargs)

        sslmed.training.engine.torch.save = half_save
    elif point == "export":
        original_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith("backbone.safetensors") and reached():
                _kill()
            original_replace(src, dst)

        sslmed.core.files.os.replace = replace  # every atomic write renames through core.files
    elif point == "evaluation":
        original_rows = sslmed.evaluation.evaluate.probe_rows

        def probe_rows(*args: Any, **kwargs: Any) -> Any:
            if reached():
                _kill()
            return original_rows(*args, **kwargs)

        sslmed.evaluation.evaluate.probe_rows = probe_rows  # where evaluate() looks it up
    resume = "latest" if (Path(runs_dir) / "faulty").is_dir() else None
    run_recipe(recipe, runs_dir=runs_dir, resume=resume, progress=False)


if __name__ == "__main__":
    run_and_kill(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
