"""Augmentation on the device vs on the CPU: the same short pre-training, same seeds,
probed the same way; the two paths should agree within the seed-to-seed noise.

SimCLR + MDRE views, ResNet-18, PneumoniaMNIST train (pre-training) and its official
test split (linear probe). Each seed runs both paths, alternating. Prints one JSON
line per run and a summary (mean and spread of the probe's balanced accuracy and AUC
per path).

    python bench/aug_paths.py [--seeds 0 1 2] [--steps 40] [--image-size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from sslmed.app.runner import run_recipe
from sslmed.data.roots import resolve_data_root

RECIPE = """\
name: aug_paths
data_root: {root}
data:
  pneumoniamnist: {{name: medmnist_npz, path: pneumoniamnist/pneumoniamnist.npz, classes: [normal, pneumonia]}}
defaults:
  backbone: {{name: resnet18, small_input: false}}
  objective: {{name: simclr, temperature: 0.2}}
  augmentations:
    - {{name: simclr, min_scale: 0.3}}
    - {{name: mdre, p: 0.5}}
  image_size: {size}
  batch_size: {batch}
  max_steps: {steps}
  accelerator: cpu
  checkpoint_every_n_steps: 1000
  optimizer: {{name: adamw, lr: 0.002}}
steps:
  - name: pretrain
    data: pneumoniamnist
evaluation:
  data: pneumoniamnist
  probes: [linear]
  baselines: []
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"cpu": [], "device": []}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "aug_paths.yaml"
        recipe.write_text(
            RECIPE.format(root=resolve_data_root(), size=args.image_size, batch=args.batch_size, steps=args.steps)
        )
        for seed in args.seeds:
            order = ("cpu", "device") if seed % 2 == 0 else ("device", "cpu")  # alternate which goes first
            for path in order:
                started = time.perf_counter()
                result = run_recipe(
                    recipe,
                    (f"defaults.seed={seed}", f"defaults.augment_on={path}", f"evaluation.seed={seed}"),
                    runs_dir=Path(tmp) / "runs",
                    progress=False,
                )
                row = next(r for r in result.rows if r["probe"] == "linear")
                entry = {
                    "path": path,
                    "seed": seed,
                    "balanced_accuracy": round(row["balanced_accuracy"], 4),
                    "macro_auc": round(row["macro_auc"], 4),
                    "seconds": round(time.perf_counter() - started, 1),
                }
                results[path].append(entry)
                print(json.dumps(entry), flush=True)
    for path, rows in results.items():
        for key in ("balanced_accuracy", "macro_auc"):
            values = [r[key] for r in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{path:6s} {key}: mean {statistics.mean(values):.3f}, sd {spread:.3f}, runs {values}")


if __name__ == "__main__":
    main()
