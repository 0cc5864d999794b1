"""The text the page shows about the model and a prediction: the model card, calibration
and out-of-distribution notes, the training data, the warning on an unusual image.
"""

from __future__ import annotations

import math
from typing import Any

from sslmed.serving.detection import GOOD_IN, GOOD_OTHER
from sslmed.serving.predict import Prediction, Predictor

DISCLAIMER = (
    "**Research tool, not a diagnostic device.** This model was trained in a research "
    "project on public data sets; it has not been validated clinically and must not be "
    "used to diagnose, treat or triage anyone."
)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def model_card(predictor: Predictor) -> str:
    """Markdown describing the model: recipe, data, architecture, test metrics, limits."""
    meta = predictor.meta
    backbone = meta.get("backbone", {})
    arch = backbone.get("name", "?") if isinstance(backbone, dict) else str(backbone)
    lines = [
        DISCLAIMER,
        "",
        f"- **Recipe:** `{meta.get('recipe', '?')}` (pre-training step `{meta.get('step', '?')}`)",
        f"- **Data (probe and test):** `{meta.get('data', '?')}`",
        f"- **Backbone:** `{arch}`, input {predictor.image_size}×{predictor.image_size} px, "
        f"{predictor.in_channels} channel(s); linear probe on frozen features",
        f"- **Classes:** {', '.join(predictor.classes)}",
    ]
    if predictor.extras:
        lines.append(f"- **Extra modules:** {', '.join(sorted(predictor.extras))}")
    metrics = meta.get("metrics") or {}
    if metrics:
        lines += [
            "",
            "**Test metrics** (held-out split, as reported by the run):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key, name in (
            ("accuracy", "accuracy"),
            ("balanced_accuracy", "balanced accuracy"),
            ("macro_auc", "macro AUC"),
        ):
            if key in metrics:
                lines.append(f"| {name} | {_format_value(metrics[key])} |")
        for label, value in (metrics.get("recall") or {}).items():
            lines.append(f"| recall {label} | {_format_value(value)} |")
        if "train_images" in metrics:
            lines.append(f"| probe training images | {metrics['train_images']} |")
    else:
        lines += ["", "*No test metrics were recorded with this model.*"]
    lines += ["", calibration_text(meta), "", ood_text(meta)]
    lines += [
        "",
        "Grad-CAM shows where the evidence for the top class lies in the deepest feature map with at "
        "least 4×4 positions (its layer is named under the map); it is a coarse aid for looking at the "
        "model, not a finding.",
        "",
        f"Run: `{predictor.model_dir.parent.name}`",
    ]
    return "\n".join(lines)


def calibration_text(meta: dict[str, Any]) -> str:
    """One sentence on whether (and how well) the probabilities are calibrated."""
    cal = meta.get("calibration")
    if not cal:
        return "**Probabilities:** the probe's softmax, *not calibrated* (this export has no temperature)."
    return (
        f"**Probabilities are calibrated:** temperature scaling (T = {cal['temperature']:.2f}, fitted on "
        f"{cal['fitted_on']}); on the test split the expected calibration error went from "
        f"{cal['ece_before']:.3f} to {cal['ece_after']:.3f} and the Brier score from "
        f"{cal['brier_before']:.3f} to {cal['brier_after']:.3f}."
    )


def ood_text(meta: dict[str, Any]) -> str:
    """One sentence on the out-of-distribution check of this model, and how well it works."""
    ood = meta.get("ood")
    if not ood:
        return "**Out-of-distribution check:** none (this export has no feature statistics)."
    text = (
        f"**Out-of-distribution check:** an image whose features lie further from the training images' "
        f"than {ood['threshold']:.2f} (the {ood['quantile']:.0%} quantile of {ood['fitted_on']}) is flagged"
        + (
            f", and so is one whose intensity statistics lie further than {ood['gate']['threshold']:.2f} from theirs"
            if ood.get("gate")
            else ""
        )
        + "; the check cannot prove an image is a chest radiograph, and misses some that are not."
    )
    return text + " " + ood_measured_text(meta)


def ood_measured_text(meta: dict[str, Any]) -> str:
    """How well this export's check was measured to work, and a warning when it is weak."""
    measured = (meta.get("ood") or {}).get("measured")
    if not measured:
        return "*Its detection was not measured (no `not_cxr` images where the model was exported).*"
    test = measured.get("test_flagged")
    own = f"{test:.0%} of its own {measured['test_images']} test images" if test is not None else "its test images"
    per = ", ".join(f"{k} {v}" for k, v in (measured.get("not_cxr_per_category") or {}).items())
    text = (
        f"Measured on this model: it flags **{measured['not_cxr_flagged']:.0%} of {measured['not_cxr_images']} "
        f"images that are not chest radiographs** (`not_cxr`: {per}) and {own}."
    )
    if not measured.get("works"):
        text += (
            f" **This model's check is weak** (the bar is {GOOD_OTHER:.0%} of `not_cxr` flagged at most "
            f"{GOOD_IN:.0%} of its own test images): no warning does not mean the image is a chest radiograph."
        )
    return text


def ood_weak_note(meta: dict[str, Any]) -> str:
    """The page's short note beside the results when the OOD check is weak or unmeasured ('' when it works)."""
    ood = meta.get("ood")
    if not ood:
        return "⚠ This model has no out-of-distribution check: it classifies any image as a chest radiograph."
    measured = ood.get("measured")
    if not measured:
        return "⚠ This model's out-of-distribution check was not measured: a missing warning proves nothing."
    if measured.get("works"):
        return ""
    return (
        f"⚠ **Weak out-of-distribution check:** it flags only {measured['not_cxr_flagged']:.0%} of images that "
        "are not chest radiographs; a missing warning does not mean the image is one."
    )


def trained_on(predictor: Predictor) -> str:
    """The short "what this model was trained on" box beside the results."""
    meta = predictor.meta
    metrics = meta.get("metrics") or {}
    scores = ", ".join(
        f"{name} {_format_value(metrics[key])}"
        for key, name in (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"))
        if key in metrics
    )
    cal = meta.get("calibration")
    ood = meta.get("ood")
    probabilities = (
        f"calibrated (T = {cal['temperature']:.2f}, test ECE {cal['ece_after']:.3f})" if cal else "not calibrated"
    )
    lines = [
        "**What this model was trained on**",
        "",
        f"- Data: `{meta.get('data', '?')}` (chest radiographs); classes: {', '.join(predictor.classes)}",
        f"- Test split: {scores or 'no metrics recorded'}",
        f"- Probabilities: {probabilities}",
        f"- Out-of-distribution threshold: {format(ood['threshold'], '.2f') if ood else 'none'}"
        + (
            f" (flags {ood['measured']['not_cxr_flagged']:.0%} of non-chest images, "
            f"{ood['measured']['test_flagged']:.0%} of its test images)"
            if ood and ood.get("measured") and ood["measured"].get("test_flagged") is not None
            else ""
        ),
        "",
        "Research tool, not a diagnostic device.",
    ]
    return "\n".join(lines)


def ood_warning(prediction: Prediction) -> str:
    """The warning shown above the probabilities ('' when the image is not flagged)."""
    if not prediction.ood_flag:
        return ""
    return (
        f"### ⚠ This image is unlike the images this model was trained on\n"
        f"Its out-of-distribution score is {prediction.ood_score:.2f}, above the threshold "
        f"{prediction.ood_threshold:.2f}. It may not be a chest radiograph, or it comes from a very "
        "different source; **the probabilities below are not meaningful for it**."
    )
