"""``sslmed report``: tables with confidence intervals and figures from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from sslmed.artifacts.exports import save_backbone, save_tensors
from sslmed.core.metrics import metrics
from sslmed.core.plugins import get_registry
from sslmed.core.tasks import MULTICLASS
from sslmed.evaluation.calibration import calibrate, reliability_figure
from sslmed.report import bootstrap_ci, build_report, metric_values, seed_ci

CLASSES = ["Covid-19", "No_findings", "Pneumonia"]
COVID3 = {"name": "csv", "path": "covid3", "patient_column": "patient_id", "test_size": 0.2, "val_size": 0.1}


def fake_proba(rng: np.random.Generator, y: np.ndarray, skill: float) -> np.ndarray:
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += skill
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def row(model: str, probe: str, y: np.ndarray, proba: np.ndarray, fraction: float = 1.0) -> dict:
    return {
        "model": model,
        "probe": probe,
        "label_fraction": fraction,
        "train_images": 100,
        **metrics(y, proba, CLASSES),
        "test_predictions": MULTICLASS.predictions(y, proba),
    }


def make_run(
    root: Path,
    name: str,
    seed: int,
    skill: float,
    data_dir: Path,
    decoder: bool = False,
    fractions=(1.0,),
    calibrated: bool = False,
) -> Path:
    """A finished run folder as the runner writes it (results from a fake probe)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 120)
    run = root / name / f"run-seed{seed}"
    (run / "steps" / "target" / "logs").mkdir(parents=True)
    step = {
        "name": "target",
        "data": "covid3",
        "image_size": 16,
        "in_channels": 1,
        "seed": seed,
        "backbone": {"name": "resnet18", "small_input": True},
        "augmentations": [{"name": "simclr"}] + ([{"name": "mdre", "p": 0.5}] if decoder else []),
    }
    recipe = {
        "name": name,
        "data_root": str(data_dir),
        "data": {"covid3": COVID3},
        "steps": [step],
        "evaluation": {"data": "covid3", "test_split": "test", "seed": 0},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    rows = [
        row("random_init", "linear", y, fake_proba(rng, y, 0.3)),
        row("supervised", "end-to-end", y, fake_proba(rng, y, 1.5)),
    ]
    rows += [row("sslmed:target", "linear", y, fake_proba(rng, y, skill * f), f) for f in fractions]
    results = {"recipe": name, "classes": CLASSES, "rows": rows}
    if calibrated:  # as evaluation writes them: calibration in results.json, the diagram beside it
        logits = np.log(fake_proba(rng, y, skill)) * 2
        calibration = calibrate(logits[:60], y[:60], logits[60:], y[60:])
        reliability_figure(calibration, run / "reliability.png")
        ood = {"threshold": 30.0, "quantile": 0.99, "fitted_on": "val", "test_flagged": 0.02, "test_images": 60}
        results.update(calibration=calibration.as_dict(), ood=ood)
    (run / "results.json").write_text(json.dumps(results))
    (run / "manifest.json").write_text(json.dumps({"host": "test-host", "git_commit": "abc1234def"}))
    (run / "timings.json").write_text(json.dumps({"steps_seconds": {"target": 12.5}}))
    terms = (
        "epoch,step,train/loss_step,train/contrastive_step,train/reconstruction_step\n"
        if decoder
        else "epoch,step,train/loss_step\n"
    )
    lines = [f"0,{i},{5 - 0.1 * i}" + (f",{4 - 0.05 * i},{1 - 0.05 * i}" if decoder else "") for i in range(10)]
    (run / "steps" / "target" / "logs" / "metrics.csv").write_text(terms + "\n".join(lines) + "\n")
    registry = get_registry()
    backbone = registry.build("backbone", step["backbone"], in_channels=1)
    extras = {}
    if decoder:
        spec = {"name": "resnet_decoder", "width": 32}
        module = registry.build("decoder", spec, backbone=backbone, image_size=16, out_channels=1)
        save_tensors(run / "steps" / "target" / "decoder.safetensors", module.state_dict())
        extras = {"decoder": {"kind": "decoder", "spec": spec, "image_size": 16, "out_channels": 1}}
    save_backbone(
        run / "steps" / "target",
        backbone,
        {"backbone": step["backbone"], "in_channels": 1, "epochs": 1, "global_step": 10, "extras": extras},
    )
    return run


def test_metric_values_match_evaluation_metrics():
    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        y = rng.integers(0, n_classes, 200)
        proba = rng.dirichlet(np.ones(n_classes), 200)
        ours, theirs = metric_values(y, proba, n_classes), metrics(y, proba, [str(i) for i in range(n_classes)])
        for key in ("accuracy", "balanced_accuracy", "macro_auc"):
            assert ours[key] == pytest.approx(theirs[key])
        assert [ours[f"recall:{i}"] for i in range(n_classes)] == pytest.approx(list(theirs["recall"].values()))


def test_bootstrap_and_seed_intervals_contain_the_value():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    ci = bootstrap_ci(y, fake_proba(rng, y, 1.0), 3, samples=300)
    for value, low, high in ci.values():
        assert low <= value <= high and high - low < 0.3
    mean, low, high = seed_ci([0.70, 0.72, 0.74])
    assert mean == pytest.approx(0.72) and low < 0.70 and high > 0.74
    assert np.isnan(seed_ci([0.7])[1])


def test_report_from_run_folders(tmp_path: Path, data_dir: Path):
    runs = tmp_path / "runs"
    make_run(runs, "simclr", 0, 1.0, data_dir)
    make_run(runs, "simclr", 1, 1.1, data_dir)  # same recipe, another seed
    make_run(runs, "crsm", 0, 2.0, data_dir, decoder=True, fractions=(0.1, 1.0), calibrated=True)
    from sslmed.app.cli import cli

    out = tmp_path / "report"
    labels = Path(__file__).resolve().parents[2] / "bench" / "thesis_labels.yaml"
    args = ["report", str(runs), "--out", str(out), "--bootstrap", "200", "--labels", str(labels)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table]
    assert labels[:5] == ["method", "random init", "supervised (from scratch)", "SimCLR", "CRSM"]
    simclr = next(line for line in table if line.startswith("| SimCLR |"))
    assert "mean over 2 seeds" in simclr and simclr.count("[") == 6  # 3 metrics + 3 recalls, each with a CI
    crsm = next(line for line in table if line.startswith("| CRSM |"))
    assert "bootstrap over 120 test images" in crsm
    for figure in ("loss_curves.png", "erasing_examples.png", "confusion_covid3.png", "label_fractions_covid3.png"):
        assert (out / figure).stat().st_size > 1000, figure
        assert f"({figure})" in text
    assert list(out.glob("reconstructions_crsm_*.png"))
    assert "## Calibration and out-of-distribution threshold" in text and "OOD threshold 30.00" in text
    assert [p.name for p in out.glob("reliability_*.png")] == ["reliability_crsm_covid3_run-seed0.png"]
    assert "- CRSM beats SimCLR: CRSM" in text  # the thesis's claims, checked
    assert "test-host" in text and "abc1234def" in text
    assert "<table>" in (out / "report.html").read_text()


def test_report_errors_are_clear(tmp_path: Path):
    from sslmed.core.errors import UsageError

    with pytest.raises(UsageError, match="no run folder below it"):
        build_report([tmp_path], tmp_path / "out")


def test_report_without_labels_knows_no_method_by_name(tmp_path: Path, data_dir: Path):
    from sslmed.core.errors import UsageError
    from sslmed.report import Labels

    runs = tmp_path / "runs"
    make_run(runs, "simclr", 0, 1.0, data_dir)
    make_run(runs, "crsm", 0, 2.0, data_dir)
    text = build_report([runs], tmp_path / "out", samples=0, figures=False).read_text()
    labels = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert labels[:5] == ["method", "random init", "supervised (from scratch)", "crsm", "simclr"]
    assert "Claims" not in text and "CRSM" not in text
    bad = tmp_path / "labels.yaml"
    bad.write_text("methods: {simclr: SimCLR}\nclaim: []\n")
    with pytest.raises(UsageError, match=rf"labels file {bad}: claim: Extra inputs are not permitted"):
        Labels.from_file(bad)
