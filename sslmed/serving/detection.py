"""How well does a model export's out-of-distribution check work? Measured on the export itself.

A threshold fitted on the validation split says how many in-distribution images are
flagged, not whether anything else is. Every export therefore measures, with its own
weights and threshold: the share of ``not_cxr`` images of the data root flagged (other
modalities and a hand radiograph, real images that are not chest radiographs), per
category, and the share of its own test images flagged. The numbers go into
``model.json`` (``ood.measured``), the model card and the page, which says when the
check is weak (:data:`GOOD_OTHER` of not_cxr flagged at most :data:`GOOD_IN` of its own
test images is the bar).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from sslmed.artifacts.exports import load_model_files
from sslmed.artifacts.rundir import MODEL_EXPORT, meta_file
from sslmed.core.files import atomic_write_json
from sslmed.data.roots import resolve_data_root
from sslmed.serving.predict import Predictor

#: the bar a check must meet to be called working: this share of not_cxr flagged ...
GOOD_OTHER = 0.90
#: ... while at most this share of the model's own test images is flagged
GOOD_IN = 0.05
#: not_cxr images per category measured (5 categories)
PER_CATEGORY = 20
NOT_CXR = "not_cxr"


def not_cxr_images(data_root: Path | None = None, per_category: int = PER_CATEGORY) -> list[tuple[Path, str]]:
    """``per_category`` images of each ``not_cxr`` category (spread over the folder), or
    ``[]`` when the data root has no ``not_cxr``."""
    folder = (Path(data_root) if data_root is not None else resolve_data_root()) / NOT_CXR
    if not (folder / "labels.csv").is_file():
        return []
    by_category: dict[str, list[Path]] = {}
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_category.setdefault(row["label"], []).append(folder / "images" / row["path"])
    chosen = []
    for category in sorted(by_category):
        paths = by_category[category]
        step = max(1, len(paths) // per_category)
        chosen += [(p, category) for p in paths[::step][:per_category] if p.is_file()]
    return chosen


def measure_detection(
    predictor: Predictor,
    test_flagged: float | None,
    test_images: int,
    data_root: Path | None = None,
    per_category: int = PER_CATEGORY,
) -> dict[str, Any] | None:
    """The export's own detection: not_cxr flagged (overall and per category) at its
    threshold, and ``test_flagged`` of its ``test_images``; ``None`` without an OOD score
    or without ``not_cxr`` in the data root."""
    if predictor.ood is None:
        return None
    images = not_cxr_images(data_root, per_category)
    if not images:
        return None
    flags: list[bool] = []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        flags += [bool(r.ood_flag) for r in predictor.analyse([p for p, _ in chunk])]
    categories = np.array([c for _, c in images])
    flagged = np.array(flags)
    per = {c: f"{int(flagged[categories == c].sum())}/{int((categories == c).sum())}" for c in sorted(set(categories))}
    other = float(flagged.mean())
    measured: dict[str, Any] = {
        "not_cxr_flagged": round(other, 4),
        "not_cxr_images": len(images),
        "not_cxr_per_category": per,
        "test_flagged": None if test_flagged is None else round(float(test_flagged), 4),
        "test_images": int(test_images),
    }
    measured["works"] = bool(other >= GOOD_OTHER and (test_flagged is None or test_flagged <= GOOD_IN))
    return measured


def record_detection(model_dir: Path, measured: dict[str, Any]) -> None:
    """Write ``measured`` into the export's ``model.json`` as ``ood.measured``."""
    _tensors, meta = load_model_files(model_dir)
    meta = dict(meta)
    meta["ood"] = {**meta["ood"], "measured": measured}
    atomic_write_json(meta_file(model_dir, MODEL_EXPORT), meta)


def measure_and_record(
    model_dir: Path, test_flags: np.ndarray, data_root: Path | None = None, per_category: int = PER_CATEGORY
) -> dict[str, Any] | None:
    """Load the export in ``model_dir``, measure its detection (``test_flags``: which of
    its test images it flags, from fitting: ``TrustFit.test_flags()``) and record it;
    the numbers, or ``None``."""
    predictor = Predictor(model_dir, device="cpu")  # a fresh load: exactly what predict and serve run
    if predictor.ood is None:
        return None
    flags = np.asarray(test_flags, dtype=bool)
    test_flagged = float(flags.mean()) if len(flags) else None
    measured = measure_detection(predictor, test_flagged, len(flags), data_root, per_category)
    if measured is not None:
        record_detection(model_dir, measured)
    return measured
