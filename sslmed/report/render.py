"""Rendering a report: Markdown tables, the runs table, the HTML page, and
:func:`build_report`, which puts runs, statistics and figures together."""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

from sslmed.artifacts.rundir import RELIABILITY, RunDir
from sslmed.core.errors import UsageError
from sslmed.core.files import atomic_write_bytes, atomic_write_text
from sslmed.report.figures import (
    _slug,
    confusion_figure,
    erasing_figure,
    fraction_figure,
    loss_figure,
    reconstruction_figure,
)
from sslmed.report.labels import Labels
from sslmed.report.runs import Run, find_runs, load_run
from sslmed.report.stats import Entry, claim_lines, entries_for_target

log = logging.getLogger(__name__)


def _cell(value: tuple[float, float, float]) -> str:
    point, low, high = value
    if math.isnan(point):
        return "n/a"
    if math.isnan(low):
        return f"{point:.3f}"
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


def markdown_table(entries: list[Entry], classes: list[str]) -> str:
    head = ["method", "accuracy", "balanced accuracy", "macro AUC"] + [f"recall {c}" for c in classes] + ["CI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        cells = [entry.label] + [_cell(entry.values[k]) for k in ("accuracy", "balanced_accuracy", "macro_auc")]
        cells += [_cell(entry.values.get(f"recall:{i}", (float("nan"),) * 3)) for i in range(len(classes))]
        lines.append("| " + " | ".join(cells + [entry.how]) + " |")
    return "\n".join(lines)


def runs_table(runs: list[Run]) -> str:
    """Where and how each run was made."""
    lines = [
        "| run | recipe | target | host | commit | steps (epochs, optimiser steps) | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        parts = []
        for step in run.recipe.get("steps", []):
            meta_file = RunDir(run.path).step(step["name"]).backbone_meta
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            parts.append(
                f"{step['name']}: {step.get('data')} {step.get('image_size')}px, "
                f"{meta.get('epochs', '?')} ep / {meta.get('global_step', '?')} st"
            )
        seconds = sum((run.timings.get("steps_seconds") or {}).values()) if run.timings else None
        commit = (run.manifest.get("git_commit") or "?")[:10]
        lines.append(
            f"| {run.path.name} | {run.name} | {run.target} | {run.manifest.get('host', '?')} | {commit} "
            f"| {'; '.join(parts)} | {seconds if seconds is not None else '?'} |"
        )
    return "\n".join(lines)


def _markdown_to_html(text: str) -> str:
    """The report's own Markdown (headings, tables, images, paragraphs) as HTML."""
    out: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            cells = [
                [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
                for line in table
                if not re.fullmatch(r"\|(---\|)+", line.strip())
            ]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in cells[0])
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        heading = re.match(r"(#+) (.*)", line)
        if image:
            out.append(
                f'<p><img src="{html.escape(image.group(2))}" alt="{html.escape(image.group(1))}" '
                'style="max-width:100%"></p>'
            )
        elif heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>sslmed report</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n"
    )


def calibration_lines(runs: list[Run], out: Path) -> list[str]:
    """For each run whose evaluation calibrated its probe: the numbers and its
    reliability diagram (copied next to the report)."""
    lines: list[str] = []
    for run in runs:
        cal, ood = run.results.get("calibration"), run.results.get("ood")
        figure = run.path / RELIABILITY
        if not cal or not figure.is_file():
            continue
        if not lines:
            lines = ["## Calibration and out-of-distribution threshold", ""]
        name = f"reliability_{_slug(run.name)}_{_slug(run.target)}_{_slug(run.path.name)}.png"
        atomic_write_bytes(out / name, figure.read_bytes())
        text = (
            f"{run.name} → {run.target}: temperature {cal['temperature']:.2f} (fitted on {cal['fitted_on']}); "
            f"test ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f}, Brier {cal['brier_before']:.3f} → "
            f"{cal['brier_after']:.3f}"
        )
        if ood:
            text += f"; OOD threshold {ood['threshold']:.2f}, {ood['test_flagged']:.1%} of test images flagged"
        lines += [text + ".", "", f"![reliability diagram]({name})", ""]
    return lines


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    samples: int = 1000,
    figures: bool = True,
    title: str = "sslmed comparison report",
    command: str | None = None,
    labels: Labels | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and the figures for ``run_dirs`` into ``out``.

    ``labels`` names and orders the methods and lists the claims to check (none by default).
    """
    labels = labels or Labels()
    runs = [load_run(p) for p in find_runs(run_dirs)]
    runs = [r for r in runs if r.results.get("rows")]
    if not runs:
        raise UsageError("no run with results to report on (run the recipes' evaluation first)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Made with: `{command}`", ""]
    lines += [
        f"{len(runs)} run(s). Linear probe on frozen features, all training labels. 95% CIs: mean and "
        "t-interval over runs that differ only by seed, or a percentile bootstrap over the test images "
        f"({samples} resamples) for a single run. Probe settings were chosen on the validation split where the "
        "data has one; the test split is only scored.",
        "",
    ]
    by_target: dict[str, list[Run]] = {}
    for run in runs:
        by_target.setdefault(run.target, []).append(run)
    for target, target_runs in by_target.items():
        classes = target_runs[0].classes
        entries = entries_for_target(target_runs, samples=samples, labels=labels)
        lines += [f"## Target: {target}", "", markdown_table(entries, classes), ""]
        checked = claim_lines(entries, labels.claims)
        if checked:
            lines += [f"{labels.claims_title}:", ""] + checked + [""]
        if figures:
            name = f"confusion_{_slug(target)}.png"
            if confusion_figure(entries, classes, out / name):
                lines += [
                    "Confusion matrices (rows: true class; numbers: test images).",
                    "",
                    f"![confusion matrices {target}]({name})",
                    "",
                ]
            name = f"label_fractions_{_slug(target)}.png"
            if fraction_figure(target_runs, out / name, labels=labels):
                lines += [
                    "Balanced accuracy against the fraction of labels the probe "
                    "(or the supervised model) was trained on.",
                    "",
                    f"![label fractions {target}]({name})",
                    "",
                ]
    if figures:
        lines += ["## Figures", ""]
        if loss_figure(runs, out / "loss_curves.png", labels=labels):
            lines += [
                "Training losses: the total, and each further term the objectives logged.",
                "",
                "![loss curves](loss_curves.png)",
                "",
            ]
        try:
            if erasing_figure(runs, out / "erasing_examples.png", labels=labels):
                lines += [
                    "The tensor-stage augmentations (erasing) on real test images, two draws each.",
                    "",
                    "![erasing examples](erasing_examples.png)",
                    "",
                ]
        except Exception as exc:
            log.warning("report: erasing figure skipped: %s", exc)
        for run in runs:
            name = f"reconstructions_{_slug(run.name)}_{_slug(run.target)}_{_slug(run.path.name)}.png"
            try:
                made = reconstruction_figure(run, out / name, labels=labels)
            except Exception as exc:
                log.warning("report: reconstructions of %s skipped: %s", run.path, exc)
                made = False
            if made:
                lines += [
                    f"Reconstructions by the exported decoder: {labels.method(run.name)} → {run.target}.",
                    "",
                    f"![reconstructions]({name})",
                    "",
                ]
    if figures:
        lines += calibration_lines(runs, out)
    lines += ["## Runs", "", runs_table(runs), ""]
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", _markdown_to_html(text))
    return out / "report.md"
