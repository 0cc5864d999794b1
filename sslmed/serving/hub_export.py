"""``sslmed export``: a model export as a self-describing folder in the layout of a
Hugging Face model repository, ready to upload as it is (never uploaded from here).

::

    export/
      README.md          model card: YAML metadata, data, metrics with 95% intervals,
                         intended use, limits, how to load it
      config.json        classes (id2label), preprocessing, calibration, OOD threshold, files
      model.safetensors  the weights (backbone, head, OOD statistics), as in ``model/``
      model.json         sslmed's description of them (``sslmed.load_model`` reads it)
      model.onnx         with ``--format onnx``: see :mod:`sslmed.serving.onnx_export`

The metrics come from the model's own ``model.json``; their intervals from the run's
``results.json`` (the test predictions of the same row), resampled as the report does
(:func:`sslmed.evaluation.comparisons.interval`). A model folder without its run has no intervals,
and the card says so.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from sslmed import __version__
from sslmed.artifacts.rundir import MODEL_EXPORT, RESULTS_JSON, meta_file, weights_file
from sslmed.core.errors import CheckpointError
from sslmed.core.files import atomic_write_json, atomic_write_text
from sslmed.training.transforms import image_mode, normalize_values

CONFIG, CARD = "config.json", "README.md"
FORMATS = ("safetensors", "onnx")
#: metrics of the card, as results rows name them, with the label a reader sees
CARD_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_auc": "macro AUC"}


def model_config(meta: dict[str, Any], onnx_outputs: list[str] | None) -> dict[str, Any]:
    """``config.json``: what a user of the folder needs to prepare inputs and read outputs."""
    classes = list(meta["classes"])
    channels = int(meta["in_channels"])
    values = normalize_values(channels)
    ood = meta.get("ood")
    return {
        "library_name": "sslmed",
        "sslmed_version": __version__,
        "backbone": meta["backbone"],
        "problem_type": "multi_label_classification"
        if meta.get("activation") == "sigmoid"
        else "single_label_classification",
        "activation": meta.get("activation", "softmax"),
        "id2label": {str(i): c for i, c in enumerate(classes)},
        "label2id": {c: i for i, c in enumerate(classes)},
        "num_channels": channels,
        "image_size": int(meta["image_size"]),
        "preprocessing": {
            "mode": image_mode(channels),
            "resize": [int(meta["image_size"])] * 2,
            "resample": "bilinear, antialiased",
            "rescale_factor": 1 / 255,
            "mean": values["mean"],
            "std": values["std"],
        },
        "calibration": {"temperature": meta["calibration"]["temperature"]} if meta.get("calibration") else None,
        "ood": _ood_config(ood) if ood else None,
        "files": {"weights": "model.safetensors", "onnx": "model.onnx" if onnx_outputs else None},
        "onnx": {"input": "pixel_values", "outputs": onnx_outputs} if onnx_outputs else None,
    }


def _ood_config(ood: dict[str, Any]) -> dict[str, Any]:
    """The OOD scores' names and thresholds: an image is flagged when either is over its own."""
    config = {"score": ood["score"], "threshold": ood["threshold"], "quantile": ood["quantile"]}
    if ood.get("gate"):
        config["gate"] = {"score": ood["gate"]["score"], "threshold": ood["gate"]["threshold"]}
    return config


def metric_intervals(results: dict[str, Any] | None, metrics: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """95% intervals of the card's metrics from the results row the model was exported
    from (same model, probe and label fraction, with its test predictions)."""
    if not results:
        return {}
    from sslmed.evaluation.comparisons import interval  # here: scikit-learn, only when a card is written

    for row in results.get("rows", []):
        same = all(row.get(k) == metrics.get(k) for k in ("model", "probe", "label_fraction"))
        predictions = row.get("test_predictions")
        if same and predictions:
            out = {}
            for metric in CARD_METRICS:
                _, low, high = interval(predictions["y_true"], [predictions["proba"]], metric, samples=500)
                if not math.isnan(low):
                    out[metric] = (low, high)
            return out
    return {}


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def model_card(meta: dict[str, Any], intervals: dict[str, tuple[float, float]], onnx: bool) -> str:
    """``README.md``: Hugging Face model-card metadata + what a reader must know."""
    classes = list(meta["classes"])
    metrics = meta.get("metrics", {})
    backbone = meta["backbone"].get("name", "?")
    tags = ["medical-imaging", "chest-x-ray", "self-supervised", "image-classification", "sslmed"]
    front = [
        "---",
        "library_name: sslmed",
        "pipeline_tag: image-classification",
        "license: other  # set the licence before publishing: it depends on the training data's licences",
        "tags:",
        *[f"- {t}" for t in tags + (["onnx"] if onnx else [])],
        "---",
    ]
    lines = [
        *front,
        "",
        f"# {meta.get('recipe', 'sslmed model')}: {backbone}, {len(classes)} classes",
        "",
        f"A chest X-ray classifier trained with sslmed (version {__version__}): "
        f"backbone `{backbone}` pre-trained by the recipe `{meta.get('recipe', '?')}` (step "
        f"`{meta.get('step', '?')}`), with a linear probe on its frozen features as the head.",
        "",
        "## Data",
        "",
        f"- Evaluation data: `{meta.get('data', '?')}`; classes: {', '.join(f'`{c}`' for c in classes)}.",
        f"- Input: {'grey' if int(meta['in_channels']) == 1 else 'RGB'} images resized to "
        f"{meta['image_size']}×{meta['image_size']} px (see `config.json`'s `preprocessing`).",
        f"- Probe trained on {metrics.get('train_images', '?')} images.",
        "",
        "## Metrics (test split)",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
    ]
    for key, label in CARD_METRICS.items():
        span = intervals.get(key)
        lines.append(
            f"| {label} | {_number(metrics.get(key))} | "
            + (f"{span[0]:.3f}-{span[1]:.3f}" if span else "not available")
            + " |"
        )
    for c, r in (metrics.get("recall") or {}).items():
        lines.append(f"| recall {c} | {_number(r)} | |")
    lines += [
        "",
        "Intervals: percentile bootstrap over the test images (500 resamples), from the run's `results.json`."
        if intervals
        else "Intervals: not available (the export was made without its run's `results.json`).",
        "",
    ]
    calibration, ood = meta.get("calibration"), meta.get("ood")
    if calibration:
        lines.append(
            f"Probabilities are calibrated: logits divided by temperature {calibration['temperature']:.3f} "
            f"(fitted on {calibration.get('fitted_on', '?')})."
        )
    if ood:
        gate = ood.get("gate")
        lines.append(
            f"Out-of-distribution flag: feature distance above {ood['threshold']:.3f} "
            f"(the {ood['quantile']:.0%} quantile on {ood.get('fitted_on', '?')})"
            + (
                f", or the input's intensity statistics further than {gate['threshold']:.3f} from the training images'."
                if gate
                else "."
            )
        )
    lines += [
        "",
        "## Intended use",
        "",
        "Research on chest radiographs: comparing pre-training methods, a starting point for fine-tuning, "
        "embeddings for downstream models. **Not a medical device; not for diagnosis or triage.**",
        "",
        "## Limits",
        "",
        "- Trained and tested on public research sets only; performance on another hospital's "
        "images, devices or population is unknown until measured there.",
        "- Public sets can let a model learn the source instead of the finding (in `covid3` every "
        "COVID image comes from other sources than the other classes); read per-class recall, not accuracy alone.",
        "- The out-of-distribution flag catches images unlike the training images (other modalities, body "
        "parts); it does not guarantee that an unflagged prediction is right.",
        f"- Inputs are down-sampled to {meta['image_size']} px: findings smaller than that resolution can be lost.",
        "",
        "## How to use",
        "",
        "```python",
        "import sslmed",
        "",
        'model = sslmed.load_model("path/to/this/folder")',
        'print(model.predict(["image.png"]))  # probabilities, OOD score and flag',
        "```",
        "",
    ]
    if onnx:
        lines += [
            "With onnxruntime only: `model.onnx` takes `pixel_values` (batch×C×H×W float32, prepared as "
            "`config.json`'s `preprocessing` says) and returns `probabilities`, `features`"
            + (
                ", `ood_score` (the feature distance)"
                + (", `gate_score` (the input-statistics distance)" if ood and ood.get("gate") else "")
                + " and `ood_flag` (either over its threshold in `config.json`'s `ood`)."
                if ood
                else "."
            ),
            "",
        ]
    return "\n".join(lines)


def write_export(model_dir: Path, out: Path, formats: tuple[str, ...] = ("safetensors",)) -> Path:
    """The export folder ``out`` from the model export in ``model_dir`` (whose run,
    when it has one, gives the intervals); ``formats`` adds ``onnx``."""
    from sslmed.serving.predict import Predictor  # here: torch and the registry, only when exporting

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise CheckpointError(f"unknown export format {unknown[0]!r}; valid: {', '.join(FORMATS)}")
    predictor = Predictor(model_dir, device="cpu")
    if out.resolve() == predictor.model_dir.resolve():
        raise CheckpointError(f"{out}: the export folder must not be the model folder itself")
    out.mkdir(parents=True, exist_ok=True)
    for source in (weights_file(predictor.model_dir, MODEL_EXPORT), meta_file(predictor.model_dir, MODEL_EXPORT)):
        temp = out / f".{source.name}.tmp"
        shutil.copyfile(source, temp)
        temp.replace(out / source.name)
    outputs = None
    if "onnx" in formats:
        # lazily: onnx and its exporter load only for --format onnx
        from sslmed.serving.onnx_export import ONNX_FILE, export_onnx, graph_outputs

        export_onnx(predictor, out / ONNX_FILE)
        outputs = graph_outputs(predictor)
    results_path = predictor.model_dir.parent / RESULTS_JSON
    results = None
    if results_path.is_file():
        import json

        results = json.loads(results_path.read_text())
    intervals = metric_intervals(results, predictor.meta.get("metrics", {}))
    atomic_write_json(out / CONFIG, model_config(predictor.meta, outputs))
    atomic_write_text(out / CARD, model_card(predictor.meta, intervals, onnx=outputs is not None))
    return out
