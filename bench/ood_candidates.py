"""Out-of-distribution scores compared on one backbone: which flags not_cxr at <= 5% own test images?

Candidates (each fitted on a kermany training subset, threshold = the 95th percentile
of a validation subset, then scored on the kermany test subset and every not_cxr image):

* ``mahalanobis``: today's score (sslmed.evaluation.ood): distance of the L2-normalised
  pooled features to the nearest class mean under a shared Ledoit-Wolf covariance;
* ``knn``: cosine distance to the k-th nearest training image (Sun et al. 2022), last stage;
* ``knn-layers``: the same on the concatenated, separately normalised pooled outputs of
  every stage (``backbone.stages()``);
* ``input-gate``: Mahalanobis distance of the model input's intensity statistics (a
  16-bin histogram, mean, spread, dark and bright share) to the training images';
* ``knn-layers+gate``: flagged by either, each at the 97.5th percentile.

The backbone is a ResNet-18 (the quick start's, ``small_input: false``) either from a
run's ``model/`` export (``--model RUN``) or at random initialisation (the default: no
training needed; a stand-in, not the quick start's trained encoder).

    .venv/bin/python bench/ood_candidates.py                 # random-init ResNet-18, 32 px
    .venv/bin/python bench/ood_candidates.py --size 64
    .venv/bin/python bench/ood_candidates.py --model runs/quickstart/<stamp>

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(os.environ.get("SSLMED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def kermany(split: str, per_class: int, skip: int = 0) -> list[tuple[Path, int]]:
    with open(DATA / "kermany" / "labels.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == split]
    out = []
    for index, label in enumerate(("normal", "pneumonia")):
        paths = [DATA / "kermany" / "images" / r["path"] for r in rows if r["label"] == label]
        step = max(1, len(paths) // (per_class + skip))
        out += [(p, index) for p in paths[::step][skip : skip + per_class]]
    return out


def not_cxr() -> list[tuple[Path, str]]:
    with open(DATA / "not_cxr" / "labels.csv", newline="") as handle:
        return [(DATA / "not_cxr" / "images" / r["path"], r["label"]) for r in csv.DictReader(handle)]


def main() -> None:
    from sslmed.core.plugins import get_registry
    from sslmed.data.imaging import load_image
    from sslmed.evaluation.ood import fit_feature_distance
    from sslmed.serving.predict import Predictor
    from sslmed.training.transforms import eval_transform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a run folder or model export (default: random-init ResNet-18)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train", type=int, default=150, help="kermany train images per class")
    parser.add_argument("--val", type=int, default=60, help="kermany train images per class for the threshold")
    parser.add_argument("--test", type=int, default=100, help="kermany test images per class")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    if args.model:
        predictor = Predictor(args.model, device="cpu")
        backbone, size, what = predictor.model.backbone, predictor.image_size, f"export {args.model}"
    else:
        torch.manual_seed(0)
        backbone = get_registry().build("backbone", {"name": "resnet18"}, in_channels=1)
        size, what = args.size, "ResNet-18 at random initialisation (seed 0)"
    backbone.eval()
    transform = eval_transform(size, 1)
    stages = backbone.stages()

    @torch.inference_mode()
    def describe(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        last, layers, stats = [], [], []
        for start in range(0, len(paths), 64):
            x = torch.stack([transform(load_image(p)) for p in paths[start : start + 64]])
            pooled: list[torch.Tensor] = []
            hooks = [m.register_forward_hook(lambda _m, _i, o, keep=pooled: keep.append(o.mean(dim=(2, 3))))
                     for _, m in stages]  # fmt: skip
            try:
                last.append(backbone(x).numpy())
            finally:
                for h in hooks:
                    h.remove()
            layers.append(torch.cat([torch.nn.functional.normalize(p, dim=1) for p in pooled], dim=1).numpy())
            flat = x.flatten(1)
            hist = torch.stack([torch.histc(row, bins=16, min=-1.0, max=1.0) / row.numel() for row in flat])
            extra = torch.stack(
                [flat.mean(1), flat.std(1), (flat < -0.9).float().mean(1), (flat > 0.9).float().mean(1)], dim=1
            )
            stats.append(torch.cat([hist, extra], dim=1).numpy())
        return np.concatenate(last), np.concatenate(layers), np.concatenate(stats)

    started = time.time()
    train, val = kermany("train", args.train), kermany("train", args.val, skip=args.train)
    test = kermany("test", args.test)
    other = not_cxr()
    feats = {name: describe([p for p, _ in items]) for name, items in
             (("train", train), ("val", val), ("test", test), ("other", other))}  # fmt: skip
    train_y = np.array([y for _, y in train])
    categories = np.array([c for _, c in other])

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    def knn(index: int):
        bank = unit(feats["train"][index])

        def score(a: np.ndarray) -> np.ndarray:
            distance = 1 - unit(a) @ bank.T
            return np.sort(distance, axis=1)[:, args.k - 1]

        return score

    def gate():
        from sklearn.covariance import LedoitWolf

        stats = feats["train"][2]
        mean = stats.mean(0)
        precision = LedoitWolf().fit(stats).precision_

        def score(a: np.ndarray) -> np.ndarray:
            d = a - mean
            return np.sqrt(np.einsum("nd,de,ne->n", d, precision, d))

        return score

    maha = fit_feature_distance(feats["train"][0], train_y, feats["val"][0])
    scorers = {
        "mahalanobis (today)": (lambda a: maha.score(a), 0),
        f"knn (k={args.k}, last stage)": (knn(0), 0),
        f"knn-layers (k={args.k}, {len(stages)} stages)": (knn(1), 1),
        "input-gate (intensity statistics)": (gate(), 2),
    }
    table = []

    def row(name: str, flags_test: np.ndarray, flags_other: np.ndarray) -> None:
        per = ", ".join(f"{c} {int(flags_other[categories == c].sum())}/{int((categories == c).sum())}"
                        for c in sorted(set(categories)))  # fmt: skip
        table.append(f"| {name} | {flags_other.mean():.1%} ({per}) | {flags_test.mean():.1%} |")

    flags: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, (score, index) in scorers.items():
        val_scores = score(feats["val"][index])
        for quantile in (0.95, 0.975, 0.99):
            threshold = np.quantile(val_scores, quantile)
            result = (score(feats["test"][index]) > threshold, score(feats["other"][index]) > threshold)
            flags[f"{name}@{quantile}"] = result
            if quantile == 0.95:
                row(name, *result)
    for name in ("input-gate (intensity statistics)", "mahalanobis (today)"):
        row(f"{name} at the 99th percentile", *flags[f"{name}@0.99"])
    a, b = flags["mahalanobis (today)@0.99"], flags["input-gate (intensity statistics)@0.99"]
    row("mahalanobis + input-gate (either, each at 99%: the export's default)", a[0] | b[0], a[1] | b[1])
    for name in (f"knn-layers (k={args.k}, {len(stages)} stages)", "mahalanobis (today)"):
        a, b = flags[f"{name}@0.975"], flags["input-gate (intensity statistics)@0.975"]
        row(f"{name.split(' (')[0]} + input-gate (either, each at 97.5%)", a[0] | b[0], a[1] | b[1])
    print(f"Backbone: {what}, {size} px; fitted on {len(train)} kermany train images, threshold = 95th "
          f"percentile of {len(val)} other kermany train images; {len(test)} kermany test images, "
          f"{len(other)} not_cxr; {time.time() - started:.0f} s, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| score | not_cxr flagged | own test images flagged |\n|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
