"""Evaluating a pre-trained backbone: frozen-feature probes, references and fine-tuning.

Every results table shows the pre-trained backbone next to the same backbone at
random initialisation, a probe on raw pixels and a supervised-from-scratch model, so
a reader sees what pre-training bought. :func:`evaluate` is the one call: it returns
the rows and the model to export: the linear probe on the frozen backbone or, with
``export: fine-tuned``, the network fine-tuned with all the labels (with its calibration
and OOD score either way);
:mod:`sslmed.app.results` writes them and :mod:`sslmed.serving.export` exports the probe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import lightning as L

from sslmed.artifacts.exports import load_backbone_weights
from sslmed.artifacts.rundir import StepDir
from sslmed.core.backbone import Backbone
from sslmed.core.errors import UsageError
from sslmed.core.recipe import Recipe
from sslmed.core.registry import Registry
from sslmed.core.tasks import MULTICLASS, Task, task_for
from sslmed.data.sources import ImageSource
from sslmed.evaluation.features import RAW_PIXELS, FeatureSet, LabelledSplit, extract_features
from sslmed.evaluation.finetune import FineTuneModule, finetune_proba, finetune_rows, head_as_probe, supervised_schedule
from sslmed.evaluation.ood import InputStatistics
from sslmed.evaluation.probes import probe_rows
from sslmed.evaluation.supervised import supervised_proba
from sslmed.evaluation.trust import TrustFit, fit_trust
from sslmed.training.engine import backbone_identity

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What :func:`evaluate` found: the results rows, and the pre-trained backbone with the
    linear probe fitted on all its training labels (None without a linear probe)."""

    rows: list[dict[str, Any]]
    classes: list[str]
    task: Task
    backbone: Backbone
    linear: Any = None
    model: str = ""
    #: the linear probe's temperature and OOD score (multi-class only; see :mod:`sslmed.evaluation.trust`)
    trust: TrustFit | None = None
    #: the probe of the exported model's results row: ``linear``, or ``fine-tune`` (``export: fine-tuned``)
    probe: str = "linear"


INPUT_STATISTICS = "_input_statistics"


def evaluate(recipe: Recipe, registry: Registry, step_dir: StepDir, source: ImageSource) -> Evaluation:
    """Probe the backbone exported in ``step_dir`` (the recipe's probed step) and its
    references on ``source``, as the recipe's ``evaluation`` section says."""
    settings = recipe.evaluation
    assert settings is not None  # callers check; the message is theirs
    step = recipe.probed_step()
    task = task_for(source.task)
    if settings.export == "fine-tuned" and not task.supervised_reference:
        raise UsageError(
            f"evaluation.export: 'fine-tuned' is not available for {settings.data}'s multi-label task yet "
            "(valid there: linear)"
        )

    def labelled(split: str) -> LabelledSplit:  # unlabelled images are for pre-training only
        return LabelledSplit(source, [r for r in source.records(split) if r.is_labelled])

    splits = {"train": labelled(settings.train_split), "test": labelled(settings.test_split)}
    if "val" in source.splits and settings.train_split != "val" and settings.test_split != "val":
        splits["val"] = labelled("val")
    if settings.export == "fine-tuned" and not len(splits.get("val", LabelledSplit(source, [])).records):
        raise UsageError(
            f"evaluation.export: 'fine-tuned' needs a validation split in {settings.data} (early stopping "
            "and the calibration are fitted there): give the dataset val_size or val_from_train"
        )
    labels = {name: split.labels for name, split in splits.items()}
    size, channels, batch = step.image_size, step.in_channels, settings.batch_size

    def build_backbone() -> Any:
        L.seed_everything(settings.seed, verbose=False)
        return registry.build("backbone", step.backbone.spec(), in_channels=channels)

    pretrained = build_backbone()
    load_backbone_weights(step_dir.path, pretrained, expect=backbone_identity(step))
    log.info("evaluation: probing step %s on %s", step.name, settings.data)
    name = f"sslmed:{step.name}"
    models: dict[str, Backbone | None] = {name: pretrained}
    if "random_init" in settings.baselines:
        models["random_init"] = build_backbone()
    if "raw_pixels" in settings.baselines:
        models["raw_pixels"] = RAW_PIXELS
    # the input gate of the OOD check reads the model inputs' intensity statistics, computed in the same pass
    gated = {**models, INPUT_STATISTICS: cast(Backbone, InputStatistics())} if settings.trust else models
    per_split = {k: extract_features(gated, s, size, channels, batch) for k, s in splits.items()}
    result = Evaluation([], source.classes, task, pretrained, model=name)

    def exported(model: str, backbone: Backbone, features: FeatureSet, linear: Any) -> None:
        """``model``'s linear probe becomes the export, with its temperature and OOD score."""
        result.model, result.backbone, result.linear = model, backbone, linear
        if settings.trust and linear is not None and task.name == MULTICLASS.name:
            log.info("evaluation: calibrating the exported model and fitting the out-of-distribution score")
            result.trust = fit_trust(
                linear,
                len(source.classes),
                (features.train, labels["train"]),
                (features.test, labels["test"]),
                (features.val, labels["val"]) if features.val is not None else None,
                seed=settings.seed,
                statistics={k: v[INPUT_STATISTICS] for k, v in per_split.items()},
            )

    def export_fine_tuned(module: FineTuneModule) -> None:
        """The network fine-tuned on all training labels, its own head included, as the export;
        its features (for the OOD score) and logits (for the temperature) from this backbone."""
        backbone = cast(Backbone, module.backbone.cpu().eval())
        log.info("evaluation: the export is %s fine-tuned on all the labels", name)
        extracted = {k: extract_features({name: backbone}, s, size, channels, batch)[name] for k, s in splits.items()}
        features = FeatureSet(name, extracted["train"], extracted["test"], extracted.get("val"))
        result.probe = "fine-tune"
        exported(name, backbone, features, head_as_probe(module.head))

    for model in models:
        features = FeatureSet(
            model, per_split["train"][model], per_split["test"][model], per_split.get("val", {}).get(model)
        )
        probed = probe_rows(features, labels, source.classes, settings, task)
        result.rows += probed.rows
        if model == name and settings.export == "linear":
            exported(name, pretrained, features, probed.linear)
    if "supervised" in settings.baselines and not task.supervised_reference:
        log.warning("evaluation: the supervised reference is not available for multi-label data yet; skipped")
    elif "supervised" in settings.baselines:
        log.info("evaluation: training the supervised reference")
        for fraction in settings.label_fractions:
            trained: dict[str, Any] = {}
            if "val" in splits and len(splits["val"].records):
                # to convergence on validation: fine-tuning's early stopping, one learning rate for all
                proba, trained = finetune_proba(
                    build_backbone(),
                    splits["train"],
                    splits["val"],
                    splits["test"],
                    len(source.classes),
                    size,
                    channels,
                    supervised_schedule(settings.supervised),
                    settings.seed,
                    fraction,
                    settings.class_weight,
                )
                trained = {k: trained[k] for k in ("epochs_run", "val_balanced_accuracy")}
            else:
                proba = supervised_proba(
                    build_backbone(),
                    splits["train"],
                    splits["test"],
                    len(source.classes),
                    size,
                    channels,
                    settings.supervised,
                    settings.seed,
                    fraction,
                    settings.class_weight,
                )
            row = {
                "model": "supervised",
                "probe": "end-to-end",
                "label_fraction": fraction,
                "train_images": int(len(splits["train"].records) * fraction),
                "class_weight": settings.class_weight,
                **trained,
                **task.metrics(labels["test"], proba, source.classes),
            }
            kept = task.predictions(labels["test"], proba)
            if kept is not None:
                row["test_predictions"] = kept
            result.rows.append(row)
    if settings.finetune is not None and task.supervised_reference:

        def pretrained_copy() -> Backbone:
            backbone = build_backbone()
            load_backbone_weights(step_dir.path, backbone, expect=backbone_identity(step))
            return backbone

        tuned = {name: pretrained_copy, "random_init": build_backbone}  # same network, same seed, same schedule
        keep: dict[tuple[str, float], FineTuneModule | None] = (
            {(name, 1.0): None} if settings.export == "fine-tuned" else {}
        )
        result.rows += finetune_rows(tuned, splits, source.classes, size, channels, settings, keep=keep)
        if settings.export == "fine-tuned" and keep[(name, 1.0)] is None:  # 100% is not among the rows' fractions
            result.rows += finetune_rows(
                {name: pretrained_copy}, splits, source.classes, size, channels, settings, [1.0], keep
            )
        if settings.export == "fine-tuned":
            export_fine_tuned(cast(FineTuneModule, keep[(name, 1.0)]))
    return result
