"""Calibration and the out-of-distribution flag of a trained model, on real data.

For a finished run (its ``model/`` export carries the temperature and the OOD score):

* OOD: the model's chest test images (the run's own test split) against every image
  of ``../shared/data/not_cxr`` (CT, MRI, hand radiographs): AUROC, the share flagged
  at the stored threshold, and at the threshold that flags 5% of chest test images;
  per not-chest class; and how chest radiographs from other sources score (the
  ``kermany`` test split, 224 px paediatric radiographs, and 64 px adult ones from
  ``cxr_corpus/mednist_cxr``).
* Calibration: the export's figures (test split of the run's evaluation data), and a
  second data set probed on the same frozen backbone (default ``kermany``, official
  train/test split, training images subsampled with ``--max-train``): temperature
  fitted out of fold on the training split, ECE and Brier on the test split.

    .venv/bin/python bench/trust_check.py runs/quickstart/<stamp>
    .venv/bin/python bench/trust_check.py RUN --probe-data none     # OOD only

Prints Markdown for docs/benchmarks.md; note the load average it prints.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rows(folder: str) -> list[dict[str, str]]:
    with open(DATA / folder / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@torch.inference_mode()
def features(predictor, paths: list[Path], batch: int = 64) -> np.ndarray:
    """Pooled backbone features of image files, prepared as the predictor prepares them."""
    backbone = predictor._inference_backbone()
    out = []
    for start in range(0, len(paths), batch):
        x = torch.cat([predictor.model_input(predictor.load(p)) for p in paths[start : start + batch]])
        if backbone is not predictor.model.backbone:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(backbone(x).float().numpy())
    return np.concatenate(out)


def sample(items: list, count: int | None, seed: int = 0) -> list:
    if count is None or len(items) <= count:
        return items
    chosen = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(chosen)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run folder (with model/)")
    parser.add_argument("--probe-data", default="kermany", help="second data set to calibrate a probe on, or 'none'")
    parser.add_argument("--max-train", type=int, default=1500, help="training images of --probe-data at most")
    parser.add_argument("--mednist-chest", type=int, default=300, help="cxr_corpus/mednist_cxr images scored")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from sslmed.evaluation.calibration import expected_calibration_error, softmax
    from sslmed.evaluation.ood import detection_summary
    from sslmed.evaluation.probes import fit_linear
    from sslmed.evaluation.trust import fit_trust, probe_logits
    from sslmed.serving.predict import Predictor

    load_at_start = os.getloadavg()
    began = time.perf_counter()
    predictor = Predictor(args.run, device="cpu")
    meta = predictor.meta
    if predictor.ood is None:
        raise SystemExit(f"{predictor.model_dir}: the export has no OOD score (evaluate the run again)")
    run_dir = predictor.model_dir.parent
    data_name = meta["data"]
    split_file = run_dir / "splits" / f"{data_name}.csv"
    with open(split_file, newline="") as handle:
        test_rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    chest = [DATA / data_name / "images" / r["path"] for r in test_rows]
    not_cxr = rows("not_cxr")
    groups: dict[str, list[Path]] = {f"{data_name} test (in distribution)": chest}
    for label in sorted({r["label"] for r in not_cxr}):
        groups[f"not_cxr {label}"] = [DATA / "not_cxr" / "images" / r["path"] for r in not_cxr if r["label"] == label]
    if data_name != "kermany":
        groups["kermany test (chest, other source)"] = [
            DATA / "kermany" / "images" / r["path"] for r in rows("kermany") if r["split"] == "test"
        ]
    mednist = [r for r in rows("cxr_corpus") if r["path"].startswith("mednist_cxr/")]
    groups["cxr_corpus mednist_cxr (chest, 64 px)"] = [
        DATA / "cxr_corpus" / "images" / r["path"] for r in sample(mednist, args.mednist_chest)
    ]
    scores = {name: predictor.ood.score(features(predictor, paths)) for name, paths in groups.items()}
    in_scores = scores[f"{data_name} test (in distribution)"]
    other = np.concatenate([s for n, s in scores.items() if n.startswith("not_cxr")])
    summary = detection_summary(in_scores, other, predictor.ood.threshold)
    at_5 = summary["threshold_5pct_in"]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}; "
        f"load average {'/'.join(f'{v:.1f}' for v in load_at_start)} at start"
    )
    print(
        f"model: {run_dir} (recipe {meta.get('recipe')}, step {meta.get('step')}, {meta['backbone']}, "
        f"{predictor.image_size} px, data {data_name}); OOD threshold {predictor.ood.threshold:.3f} "
        f"({meta['ood']['quantile']:.0%} quantile of {meta['ood']['fitted_on']})\n"
    )
    print(
        f"Chest ({data_name} test, {len(in_scores)}) against not_cxr (all {len(other)}): "
        f"AUROC {summary['auroc']:.3f}; at the stored threshold {summary['flagged_other']:.1%} of not-chest and "
        f"{summary['flagged_in']:.1%} of chest flagged; at the threshold flagging at most 5% of chest ({at_5:.3f}: "
        f"{(in_scores > at_5).mean():.1%}) "
        f"{summary['flagged_other_at_5pct_in']:.1%} of not-chest flagged.\n"
    )
    print("| images | n | median score | flagged (stored threshold) | flagged (5%-of-chest threshold) |")
    print("|---|---|---|---|---|")
    for name, values in scores.items():
        print(
            f"| {name} | {len(values)} | {np.median(values):.2f} | {predictor.ood.flag(values).mean():.1%} "
            f"| {(values > at_5).mean():.1%} |"
        )

    cal = meta.get("calibration")
    print("\n| data | temperature | fitted on | test images | ECE before | ECE after | Brier before | Brier after |")
    print("|---|---|---|---|---|---|---|---|")
    if cal:
        print(
            f"| {data_name} (the export) | {cal['temperature']:.3f} | {cal['fitted_on']} | {cal['test_images']} "
            f"| {cal['ece_before']:.3f} | {cal['ece_after']:.3f} "
            f"| {cal['brier_before']:.3f} | {cal['brier_after']:.3f} |"
        )
    if args.probe_data != "none":
        probe_rows = rows(args.probe_data)
        classes = sorted({r["label"] for r in probe_rows})
        train = sample([r for r in probe_rows if r["split"] == "train"], args.max_train)
        test = [r for r in probe_rows if r["split"] == "test"]

        def split(records: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
            paths = [DATA / args.probe_data / "images" / r["path"] for r in records]
            return features(predictor, paths), np.array([classes.index(r["label"]) for r in records])

        train_xy, test_xy = split(train), split(test)
        probe, _c = fit_linear(*train_xy, None, seed=0)
        trust = fit_trust(probe, len(classes), train_xy, test_xy, None)
        c = trust.calibration
        check = expected_calibration_error(
            softmax(probe_logits(probe, test_xy[0], len(classes)), c.temperature), test_xy[1]
        )
        assert abs(check - c.ece_after) < 1e-9
        print(
            f"| {args.probe_data} (probe on the same frozen backbone, {len(train)} training images) "
            f"| {c.temperature:.3f} | {c.fitted_on} | {c.test_images} | {c.ece_before:.3f} | {c.ece_after:.3f} "
            f"| {c.brier_before:.3f} | {c.brier_after:.3f} |"
        )
    print(f"\n{time.perf_counter() - began:.0f} s; load average {'/'.join(f'{v:.1f}' for v in os.getloadavg())} at end")


if __name__ == "__main__":
    main()
