"""The thesis's grid at corpus scale, with paired statistics; and the validation sweep.

Grid (``grid`` command), seed by seed: SimCLR and CRSM are pre-trained once on
``cxr_corpus`` (less every image also in a target set) and that export is reused
(``init_from: <path>``) for every target; every method also runs on the target alone:

* ``single``   - the method on the target only, from random init (all four methods);
* ``multistep``- corpus export, then the method on the target (SimCLR and CRSM);
* ``transfer`` - corpus export, probed as is (a zero-step target step).

Targets covid3 (3 classes, patient-wise test split) and kermany (official test split,
val carved patient-wise from train). Every run has linear probes at the budget's label
fractions; the reference rows (random init, raw pixels) and fine-tuning (pre-trained
vs random init, early stopping on val) are computed once per target and seed, in the
SimCLR transfer run. Then
``sslmed report`` over the run folders and ``grid.md``: each row's mean over seeds
with a 95% interval over seeds and test images, and every claim as a paired test
(same seeds, same splits; bootstrap interval of the difference, permutation p-value).

    .venv/bin/python bench/thesis_grid.py grid --budget smoke --out /tmp/grid       # CPU, minutes: runs end to end
    .venv/bin/python bench/thesis_grid.py grid --budget cpu --out runs/grid-cpu     # 64 px, 2-core CPU, hours
    .venv/bin/python bench/thesis_grid.py grid --budget gpu --out runs/grid-gpu     # 128 px, one H100/H200
    .venv/bin/python bench/thesis_grid.py sweep --budget cpu --out runs/sweep       # validation split only

Sweep (``sweep`` command): one setting changed at a time from the shipped defaults
(temperature, learning rate, crop scale, MDRE count/area, CRSM reconstruction weight),
the method trained on the target's train split, the linear probe fitted on train and
scored on the **validation** split (``evaluation.test_split=val``): the test split is
never read. ``sweep.md`` ranks the settings.

A finished run is skipped when the script is started again with the same --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sslmed.artifacts.rundir import RunDir
from sslmed.core.recipe import apply_override, load_raw, parse_override
from sslmed.data.roots import resolve_data_root
from sslmed.report.labels import BASELINE_NAMES, Labels
from sslmed.report.stats import pick_row

REPO = Path(__file__).resolve().parents[1]

METHODS = {  # method -> the shipped recipe its objective and augmentations come from
    "simclr": "simclr",
    "simclr_erasing": "simclr_erasing",
    "simclr_mdre": "simclr_mdre",
    "crsm": "crsm",
}
MULTISTEP = ("simclr", "crsm")  # the methods pre-trained on the corpus (multi-step and transfer rows)
TARGETS = ("covid3", "kermany")

DATA = {
    # the corpus less every image also in a target set (matched by path, patient and content)
    "cxr_corpus": {
        "name": "union",
        "sources": [
            {
                "dataset": {
                    "name": "csv",
                    "path": "cxr_corpus",
                    "label_column": None,
                    "test_size": 0,
                    "val_size": 0,
                    "verify": False,
                }
            },
        ],
        "exclude": [
            {"dataset": {"name": "csv", "path": name}}
            for name in ("covid3", "covid_extra_cxnet", "covid_extra_hannover", "kermany")
        ],
    },
    "covid3": {
        "name": "csv",
        "path": "covid3",
        "patient_column": "patient_id",
        "test_size": 0.2,
        "val_size": 0.1,
        "split_seed": 0,
    },
    "kermany": {
        "name": "csv",
        "path": "kermany",
        "patient_column": "patient_id",
        "split_column": "split",
        "val_from_train": 0.1,
        "classes": ["normal", "pneumonia"],
    },
}


@dataclass
class Budget:
    """How much each kind of run trains; ``steps`` are optimiser steps (-1: epochs only)."""

    image_size: int
    batch_size: int
    corpus_epochs: int
    corpus_steps: int
    target_epochs: int
    target_steps: int
    fractions: list[float]
    finetune: dict[str, Any] | None
    finetune_fractions: list[float]
    supervised: bool = False
    step_extra: dict[str, Any] = field(default_factory=dict)
    eval_extra: dict[str, Any] = field(default_factory=dict)

    def images_seen(self, corpus_size: int = 22548, target_size: int = 0) -> dict[str, int]:
        """Pre-training images seen per corpus run and per target run (views: twice as many)."""

        def seen(epochs: int, steps: int, size: int) -> int:
            by_epochs = epochs * size
            return min(by_epochs, steps * self.batch_size) if steps >= 0 else by_epochs

        return {
            "corpus": seen(self.corpus_epochs, self.corpus_steps, corpus_size),
            "target": seen(self.target_epochs, self.target_steps, target_size),
        }


BUDGETS = {
    # checks that the whole grid runs; numbers mean nothing
    "smoke": Budget(16, 16, 1, 2, 1, 2, [0.1, 1.0], {"epochs": 1, "max_steps": 2, "batch_size": 16}, [0.1]),
    # a 2-core CPU in about two hours for the whole grid (3 seeds): 64 px; 100 corpus steps of 128
    # images (12,800 images, 0.59 of an epoch), 30 target steps (3,840 images); fine-tuning at 10%
    # of the labels, at most 4 epochs (adding 100% made a kermany evaluation take 366 s per seed)
    "cpu": Budget(64, 128, 1, 100, 30, 30, [0.01, 0.1, 1.0], {"epochs": 4, "batch_size": 64, "patience": 2}, [0.1]),
    # what one busy shared 2-core CPU session allowed (2026-11-27, load 17-34): 32 px, the corpus seen
    # 60 x 128 = 7,680 times (a third of one epoch), transfer rows only, fine-tuning at 10% of the labels
    "cpu-session": Budget(32, 128, 3, 60, 1, 0, [0.1, 1.0], {"epochs": 5, "batch_size": 64, "patience": 2}, [0.1]),
    # one H100/H200 with 16 cores: 128 px, 20 corpus epochs, 40 target epochs, fine-tuning at every fraction
    "gpu": Budget(
        128,
        256,
        20,
        -1,
        40,
        -1,
        [0.01, 0.1, 1.0],
        {"epochs": 30, "batch_size": 128, "patience": 5},
        [0.01, 0.1, 1.0],
        supervised=True,
        step_extra={"num_workers": 14, "precision": "bf16-mixed", "log_every_n_steps": 5},
        eval_extra={"batch_size": 512},
    ),
}


def method_parts(method: str) -> dict[str, Any]:
    """Objective and augmentations of a method, as its shipped recipe sets them."""
    raw, _lines = load_raw(REPO / "recipes" / f"{METHODS[method]}.yaml")
    step = raw["steps"][0]
    return {"objective": step["objective"], "augmentations": step["augmentations"], "optimizer": step["optimizer"]}


def step_doc(name: str, data: str, method: str, budget: Budget, seed: int, corpus: bool) -> dict[str, Any]:
    epochs, steps = (
        (budget.corpus_epochs, budget.corpus_steps) if corpus else (budget.target_epochs, budget.target_steps)
    )
    return {
        "name": name,
        "data": data,
        "backbone": {"name": "resnet18"},  # standard stem: the cheapest useful setting at 64 px on a CPU
        **method_parts(method),
        "image_size": budget.image_size,
        "batch_size": budget.batch_size,
        "epochs": epochs,
        "max_steps": steps,
        "schedule": {"name": "cosine", "warmup_epochs": 0.05 if steps > 0 else 0.5},
        "seed": seed,
        "checkpoint_every_n_steps": 100,
        **budget.step_extra,
    }


def evaluation_doc(target: str, budget: Budget, seed: int, reference: bool) -> dict[str, Any]:
    """Linear probes at the budget's label fractions; the reference rows (random init,
    raw pixels, supervised) and fine-tuning only where ``reference`` says so."""
    doc: dict[str, Any] = {
        "data": target,
        "probes": ["linear"],
        "label_fractions": budget.fractions,
        "baselines": (["random_init", "raw_pixels"] + (["supervised"] if budget.supervised else []))
        if reference
        else [],
        "seed": seed,
        "trust": False,  # no calibration or OOD score: these models are compared, never served
        **budget.eval_extra,
    }
    if reference and budget.finetune:
        doc["finetune"] = {**budget.finetune, "label_fractions": budget.finetune_fractions}
    return doc


@dataclass
class Job:
    """One ``sslmed run``: its id, recipe document and run folder."""

    id: str
    recipe: dict[str, Any]
    run_dir: Path
    kind: str
    method: str
    target: str | None
    seed: int
    needs: Path | None = None  # a corpus export that must exist first


def plan(out: Path, budget: Budget, methods: list[str], targets: list[str], seeds: list[int]) -> list[Job]:
    """Seed by seed: the corpus runs (one per multi-step method), then every target run.

    The single-step rows of every method train on the target from random init; SimCLR
    and CRSM are also pre-trained on the corpus once per seed, and that export is both
    probed as is (``transfer``) and trained further on each target (``multistep``). The
    reference rows (random init, raw pixels) and the fine-tuning comparison are
    computed once per target and seed, in the SimCLR transfer run."""
    jobs: list[Job] = []
    corpus_methods = [m for m in methods if m in MULTISTEP]
    for seed in seeds:  # seed by seed: a grid stopped by its deadline has whole seeds
        for method in corpus_methods:
            jid = f"corpus__{method}__seed{seed}"
            recipe = {
                "name": jid,
                "data": {"cxr_corpus": DATA["cxr_corpus"]},
                "steps": [step_doc("corpus", "cxr_corpus", method, budget, seed, corpus=True)],
            }
            jobs.append(Job(jid, recipe, out / "runs" / jid, "corpus", method, None, seed))
        for target in targets:
            for method in methods:
                corpus_export = out / "runs" / f"corpus__{method}__seed{seed}" / "steps" / "corpus"
                kinds = (["transfer", "multistep"] if method in corpus_methods else []) + ["single"]
                for kind in kinds:
                    step = step_doc("target", target, method, budget, seed, corpus=False)
                    if kind != "single":
                        step["init_from"] = str(corpus_export)
                    if kind == "transfer":
                        step["max_steps"] = 0  # the corpus export probed as is
                    reference = kind == "transfer" and method == REFERENCE_METHOD
                    jid = f"{target}__{method}__{kind}__seed{seed}"
                    recipe = {
                        "name": f"{method}_{kind}",
                        "data": {target: DATA[target]},
                        "steps": [step],
                        "evaluation": evaluation_doc(target, budget, seed, reference=reference),
                    }
                    needs = corpus_export if kind != "single" else None
                    jobs.append(Job(jid, recipe, out / "runs" / jid, kind, method, target, seed, needs))
    return jobs


def run_job(job: Job, out: Path, data_root: Path, deadline: float | None) -> dict[str, Any]:
    """``sslmed run`` one job (skipped when done; not started after the deadline)."""
    done_marker = job.run_dir / ("steps/corpus/backbone.json" if job.kind == "corpus" else "results.json")
    record = {"id": job.id, "kind": job.kind, "method": job.method, "target": job.target, "seed": job.seed}
    if done_marker.is_file():
        return {**record, "status": "done before", "seconds": 0.0, "run_dir": str(job.run_dir)}
    if deadline is not None and time.monotonic() > deadline:
        return {**record, "status": "not started (deadline)", "seconds": 0.0, "run_dir": None}
    if job.needs is not None and not (job.needs / "backbone.json").is_file():
        return {**record, "status": "skipped (corpus export missing)", "seconds": 0.0, "run_dir": None}
    recipe_path = out / "recipes" / f"{job.id}.yaml"
    recipe_path.parent.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(yaml.safe_dump({"data_root": str(data_root), **job.recipe}, sort_keys=False))
    command = [sys.executable, "-m", "sslmed.app.cli", "-q", "run", str(recipe_path), "--run-dir", str(job.run_dir)]
    started = time.perf_counter()
    log = out / "logs" / f"{job.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ})
    seconds = round(time.perf_counter() - started, 1)
    ok = code == 0 and done_marker.is_file()
    status = "ok" if ok else f"FAILED (exit {code}; see {log})"
    print(f"[{time.strftime('%H:%M:%S')}] {job.id}: {status} in {seconds:.0f} s", flush=True)
    return {**record, "status": status, "seconds": seconds, "run_dir": str(job.run_dir) if ok else None}


# ------------------------------------------------------------------ the summary


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return list(RunDir(run_dir).read_results().get("rows", []))  # none before the run finished


#: row labels and claims, shared with ``sslmed report --labels`` (rows here are "<method>/<kind>")
LABELS = Labels.from_file(REPO / "bench" / "grid_labels.yaml")
REFERENCE_MODELS = {title: name for name, title in BASELINE_NAMES.items()}  # "random init" -> "random_init"
METRIC_HEADERS = {"macro_auc": "macro AUC", "recall:0": "COVID-19 recall", "sensitivity": "sensitivity (pneumonia)"}
REFERENCE_METHOD = "simclr"  # the transfer runs of this method also compute the reference rows


def grid_row(label: str) -> str:
    """A row label of the labels file as this summary names it: "SimCLR multi-step" (recipe
    ``simclr_multistep``) -> "simclr/multistep"; a reference ("random init") as it is."""
    names = {title: name for name, title in LABELS.methods.items()}
    if label not in names:
        return label
    method, kind = names[label].rsplit("_", 1)
    return f"{method}/{kind}"


def predictions_by_seed(
    results: list[dict[str, Any]], target: str, label: str, probe: str, fraction: float
) -> dict[int, dict[str, Any]]:
    """Seed -> test predictions of one table row (a method/kind, or a reference taken
    from the transfer runs, which every budget has)."""
    out: dict[int, dict[str, Any]] = {}
    for entry in results:
        if entry.get("target") != target or not entry.get("run_dir"):
            continue
        if label in REFERENCE_MODELS:
            if entry["kind"] != "transfer" or entry["method"] != REFERENCE_METHOD:
                continue
            row = pick_row(_rows(Path(entry["run_dir"])), REFERENCE_MODELS[label], probe, fraction)
        else:
            if f"{entry['method']}/{entry['kind']}" != label:
                continue
            row = pick_row(_rows(Path(entry["run_dir"])), "sslmed", probe, fraction)
        if row is not None and row.get("test_predictions"):
            out[entry["seed"]] = row["test_predictions"]
    return out


def summary(results: list[dict[str, Any]], budget: Budget, samples: int) -> str:
    """``grid.md``: per target, probe and label fraction, every row with its interval,
    then each claim as a paired comparison."""
    from sslmed.evaluation.comparisons import compare, interval

    lines = []
    targets = sorted({e["target"] for e in results if e.get("target")})
    labels = ["random init", "raw pixels"] + sorted(
        {f"{e['method']}/{e['kind']}" for e in results if e.get("target") and e.get("run_dir")}
    )
    probes = [("linear", f) for f in budget.fractions]
    if budget.finetune:
        probes += [("fine-tune", f) for f in budget.finetune_fractions]
    for target in targets:
        lines += [f"## {target}", ""]
        for probe, fraction in probes:
            metric_names = ["balanced_accuracy", "macro_auc"]
            if target == "kermany":
                metric_names += ["accuracy", "sensitivity", "specificity"]
            if target == "covid3":
                metric_names += ["recall:0"]  # classes in order: Covid-19, No_findings, Pneumonia
            table = []
            for label in labels:
                found = predictions_by_seed(results, target, label, probe, fraction)
                if not found:
                    continue
                y = next(iter(found.values()))["y_true"]
                cells = []
                for metric in metric_names:
                    mean, low, high = interval(y, [p["proba"] for p in found.values()], metric, samples)
                    cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
                table.append(f"| {label} | {len(found)} | " + " | ".join(cells) + " |")
            if not table:
                continue
            lines += [
                f"### {target}: {probe}, {fraction:.0%} of the labels",
                "",
                "| row | seeds | "
                + " | ".join(METRIC_HEADERS.get(m, m.replace("_", " ")) for m in metric_names)
                + " |",
                "|---|---|" + "---|" * len(metric_names),
                *table,
                "",
            ]
            claims = []
            for item in LABELS.claims:
                better, worse, claim = grid_row(item.better), grid_row(item.worse), item.claim
                a = predictions_by_seed(results, target, better, probe, fraction)
                b = predictions_by_seed(results, target, worse, probe, fraction)
                seeds = sorted(set(a) & set(b))
                if not seeds:
                    continue
                y = a[seeds[0]]["y_true"]
                result = compare(y, [a[s]["proba"] for s in seeds], [b[s]["proba"] for s in seeds], samples=samples)
                held = {"better": "HELD", "worse": "did NOT hold (reversed)"}.get(result.verdict, "not shown")
                claims.append(f"- {claim}: {better} - {worse} = {result.text()}, {len(seeds)} seed(s): **{held}**")
            if claims:
                lines += ["Paired comparisons (balanced accuracy; 95% bootstrap interval, permutation p):", ""]
                lines += claims + [""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - informational only
        pass
    info["commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=5
    ).stdout.strip()
    return info


def write_report(out: Path, run_dirs: list[str]) -> None:
    """``sslmed report`` over the finished target runs, into ``out/report``."""
    if run_dirs:
        labels = REPO / "bench" / "grid_labels.yaml"
        command = ["report", *run_dirs, "--out", str(out / "report"), "--labels", str(labels), "--title", "thesis grid"]
        subprocess.call([sys.executable, "-m", "sslmed.app.cli", "-q", *command], cwd=REPO)


# ------------------------------------------------------------------ the sweep

SWEEP = {  # method -> setting -> values tried (dotted keys inside the step)
    "simclr": {
        "objective.temperature": [0.1, 0.2, 0.5],
        "optimizer.lr": [0.001, 0.002, 0.004],
        "augmentations.0.min_scale": [0.2, 0.3, 0.5],
    },
    "simclr_mdre": {
        "augmentations.1.max_count": [4, 8, 10],  # count x max_area <= 0.6 (MDRE refuses more)
        "augmentations.1.max_area": [0.02, 0.04, 0.06],
    },
    "crsm": {"objective.reconstruction_weight": [0.3, 1.0, 3.0]},
}


def _get(doc: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` (the key syntax of ``--set``)."""
    node: Any = doc
    for part in parse_override(f"{dotted}=")[0]:
        node = node[part]
    return node


def sweep_jobs(out: Path, budget: Budget, target: str, seeds: list[int]) -> list[Job]:
    """One job per (method, setting, value, seed): trained on train, probe scored on val.
    A value equal to the shipped default is one run per method and seed (``default``)."""
    jobs = []
    for method, settings in SWEEP.items():
        for seed in seeds:
            shipped = step_doc("target", target, method, budget, seed, corpus=False)
            variants: list[tuple[str, dict[str, Any]]] = [("default", shipped)]
            for key, values in settings.items():
                for value in values:
                    if value == _get(shipped, key):
                        continue
                    step = json.loads(json.dumps(shipped))
                    apply_override(step, f"{key}={value}")
                    variants.append((f"{key}={value}", step))
            for setting, step in variants:
                jid = f"sweep__{target}__{method}__{setting}__seed{seed}"
                evaluation = {
                    "data": target,
                    "probes": ["linear"],
                    "label_fractions": [1.0],
                    "baselines": [],
                    "test_split": "val",  # never the test split
                    "seed": seed,
                    **budget.eval_extra,
                }
                recipe = {"name": "sweep", "data": {target: DATA[target]}, "steps": [step], "evaluation": evaluation}
                jobs.append(Job(jid, recipe, out / "runs" / jid, setting, method, target, seed))
    return jobs


def sweep_summary(results: list[dict[str, Any]]) -> str:
    """``sweep.md``: validation balanced accuracy and macro AUC per setting (mean over
    seeds), best first within each method, with the difference from the shipped default."""
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for entry in results:
        if entry.get("run_dir"):
            row = pick_row(_rows(Path(entry["run_dir"])), "sslmed", "linear", 1.0)
            if row:
                value = (row["balanced_accuracy"], row.get("macro_auc", float("nan")))
                scores.setdefault((entry["method"], entry["kind"]), []).append(value)

    def mean(values: list[tuple[float, float]], i: int) -> float:
        return sum(v[i] for v in values) / len(values)

    lines = [
        "| method | setting | val balanced accuracy | vs default | val macro AUC | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for (method, setting), values in sorted(scores.items(), key=lambda kv: (kv[0][0], -mean(kv[1], 0))):
        default = scores.get((method, "default"))
        delta = f"{mean(values, 0) - mean(default, 0):+.3f}" if default else "-"
        lines.append(
            f"| {method} | {setting} | {mean(values, 0):.3f} | {delta} | {mean(values, 1):.3f} | {len(values)} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["grid", "sweep", "plan", "summary"])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="smoke")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--kinds", default="corpus,transfer,single,multistep", help="which kinds of run to start")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-root", type=Path, default=resolve_data_root())
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which no new run starts")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    budget = BUDGETS[args.budget]
    methods, targets = args.methods.split(","), args.targets.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.command == "sweep":
        jobs = [j for t in targets for j in sweep_jobs(out, budget, t, seeds)]
    else:
        kinds = set(args.kinds.split(","))
        jobs = [j for j in plan(out, budget, methods, targets, seeds) if j.kind in kinds]
    if args.command == "plan":
        for job in jobs:
            print(job.id)
        return 0
    if args.command == "summary":  # grid.md from the runs finished so far, nothing started
        done = [j for j in jobs if j.kind != "corpus" and (j.run_dir / "results.json").is_file()]
        record = {"id": "", "status": "done before", "seconds": 0.0}
        results = [{**record, "kind": j.kind, "method": j.method, "target": j.target, "seed": j.seed,
                    "run_dir": str(j.run_dir)} for j in done]  # fmt: skip
        (out / "grid.md").write_text(summary(results, budget, args.bootstrap) + "\n")
        write_report(out, [str(j.run_dir) for j in done])
        print(f"{len(done)} finished runs -> {out / 'grid.md'}, {out / 'report'}")
        return 0
    print(f"{len(jobs)} runs, budget {args.budget}: {budget} -> {out}", flush=True)
    started = time.perf_counter()
    load_start = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    deadline = time.monotonic() + args.deadline if args.deadline else None
    results = [run_job(job, out, args.data_root.resolve(), deadline) for job in jobs]
    record = {
        "command": " ".join([sys.executable] + sys.argv),
        "budget": args.budget,
        "settings": budget.__dict__,
        "images_seen": budget.images_seen(),
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "seconds": round(time.perf_counter() - started, 1),
        "runs": results,
    }
    (out / f"{args.command}.json").write_text(json.dumps(record, indent=2, default=str))
    if args.command == "sweep":
        (out / "sweep.md").write_text(sweep_summary(results) + "\n")
    else:
        (out / "grid.md").write_text(summary(results, budget, args.bootstrap) + "\n")
        write_report(out, [e["run_dir"] for e in results if e.get("run_dir") and e["kind"] != "corpus"])
    failed = [e for e in results if str(e["status"]).startswith("FAILED")]
    print(f"{len(results) - len(failed)} of {len(results)} runs ok or skipped in {record['seconds']:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
