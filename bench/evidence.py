"""The reference encoder and its curve: frozen-probe accuracy against images seen.

One long pre-training on ``cxr_corpus`` (less every target image) that exports its
backbone every ``--snapshot-every`` epochs (``snapshot_every_n_epochs``), then every
snapshot probed on kermany's official test split (linear probe with 10% and 100% of the
train labels, balanced class weights, regularisation chosen on validation), next to the
same network at random initialisation and a probe on the raw pixels (computed once),
and the final export also fine-tuned (10% and 100% of the labels, pre-trained vs random
init) and probed on covid3. Each probe is its own ``sslmed run`` (``init_from`` the
snapshot, ``max_steps: 0``), skipped when done, so an interrupted sweep continues where
it stopped; ``summary`` writes the curve (``curve.json``, ``curve.md``) from whatever
has finished and never extrapolates.

    python bench/evidence.py train   --out /work/exp/reference --epochs 46 --precision bf16-mixed
    python bench/evidence.py probe   --out /work/exp/reference
    python bench/evidence.py summary --out /work/exp/reference --results bench/results/reference-20261202
    python bench/evidence.py all     --out /work/exp/reference ...   # the three in order

Images seen are counted as images (each gives two views), epochs x corpus size.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from thesis_grid import DATA  # noqa: E402  (bench scripts share the grid's data definitions)

from sslmed.artifacts.rundir import RunDir  # noqa: E402
from sslmed.core.recipe import load_raw  # noqa: E402
from sslmed.data.roots import resolve_data_root  # noqa: E402
from sslmed.evaluation.comparisons import compare, interval  # noqa: E402
from sslmed.report.stats import pick_row  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CORPUS_IMAGES = 21_708  # cxr_corpus less the 840 images that repeat a target image (docs/results.md)

#: the comparison's methods in the order they run (most wanted first) -> the recipe their
#: objective, augmentations and reconstruction come from; SimCLR as the quick start ships it
COMPARED = {
    "simclr": "quickstart",
    "simclr_mdre": "simclr_mdre",
    "crsm": "crsm",
    "byol": "byol",
    "vicreg": "vicreg",
    "barlow_twins": "barlow_twins",
    "moco": "moco",
    "simsiam": "simsiam",
    "dino": "dino",
    "fastsiam": "fastsiam",
    "simclr_erasing": "simclr_erasing",
}


def method_parts(method: str) -> dict[str, Any]:
    """Objective, augmentations (and reconstruction) of a method, as its shipped recipe sets them."""
    raw, _lines = load_raw(REPO / "recipes" / f"{COMPARED[method]}.yaml")
    step = raw["steps"][0]
    return {k: step[k] for k in ("objective", "augmentations", "reconstruction") if step.get(k)}


METHODS = {name: method_parts(name) for name in COMPARED}


def _call(command: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        handle.flush()
        return subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ})


def _sslmed_run(recipe: dict[str, Any], path: Path, run_dir: Path, log: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    # --run-dir alone continues an interrupted run in that folder (adding --resume is refused)
    command = [sys.executable, "-m", "sslmed.app.cli", "-q", "run", str(path), "--run-dir", str(run_dir)]
    return _call(command, log)


def backbone(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": "resnet18"}  # standard stem, as the quick start


def train_recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_root": str(resolve_data_root(None)),
        "name": "reference",
        "description": f"{args.method} on cxr_corpus for {args.epochs} epochs, snapshots every {args.snapshot_every}",
        "data": {"cxr_corpus": DATA["cxr_corpus"]},
        "steps": [
            {
                "name": "corpus",
                "data": "cxr_corpus",
                "backbone": backbone(args),
                **METHODS[args.method],
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.0001},
                "schedule": {"name": "cosine", "warmup_epochs": 0.5},
                "precision": args.precision,
                "num_workers": args.workers,
                "seed": args.seed,
                "snapshot_every_n_epochs": args.snapshot_every,
                "max_steps": args.max_steps,
                "log_every_n_steps": 20,
            }
        ],
    }


def train(args: argparse.Namespace) -> int:
    """The long pre-training (resumed from its newest epoch checkpoint when started again)."""
    out = Path(args.out)
    run_dir = out / "train"
    if (run_dir / "steps" / "corpus" / "backbone.json").is_file():
        print("train: done before", flush=True)
        return 0
    started = time.perf_counter()
    code = _sslmed_run(train_recipe(args), out / "recipes" / "train.yaml", run_dir, out / "logs" / "train.log")
    _write_json(out / "train_time.json", {"seconds": round(time.perf_counter() - started, 1), "exit": code})
    print(f"[{time.strftime('%H:%M:%S')}] train: exit {code}", flush=True)
    return code


def snapshots(out: Path) -> list[tuple[str, Path, int]]:
    """``(name, export folder, epochs)`` of every snapshot and of the final export, in order."""
    step = out / "train" / "steps" / "corpus"
    found = []
    for folder in sorted((step / "snapshots").glob("epoch*")):
        if (folder / "backbone.json").is_file():
            found.append((folder.name, folder, int(json.loads((folder / "backbone.json").read_text())["epochs"])))
    if (step / "backbone.json").is_file():
        epochs = int(json.loads((step / "backbone.json").read_text())["epochs"])
        if not found or found[-1][2] != epochs:
            found.append(("final", step, epochs))
        else:
            found[-1] = ("final", step, epochs)
    return found


def probe_recipe(
    export: Path,
    target: str,
    image_size: int,
    references: bool,
    finetune: bool,
    args: argparse.Namespace,
    method: str | None = None,
) -> dict[str, Any]:
    evaluation: dict[str, Any] = {
        "data": target,
        "probes": ["linear"],
        "label_fractions": [0.1, 1.0],
        "baselines": ["random_init", "raw_pixels"] if references else [],
        "trust": False,
        "seed": 0,
    }
    if finetune:
        evaluation["finetune"] = {"epochs": 10, "batch_size": 64, "patience": 3, "label_fractions": [0.1, 1.0]}
        evaluation["baselines"] = ["random_init", "raw_pixels"]  # fine-tuning compares with random init
    return {
        "data_root": str(resolve_data_root(None)),
        "name": "probe",
        "data": {target: DATA[target]},
        "steps": [
            {
                "name": "probe",
                "data": target,
                "init_from": str(export),
                "backbone": backbone(args),
                **METHODS[method or args.method],
                "image_size": image_size,
                "max_steps": 0,
                "precision": args.precision,
            }
        ],
        "evaluation": evaluation,
    }


def probe(args: argparse.Namespace) -> int:
    """Probe every snapshot not probed yet (newest first after the first and the final, so
    that a short session still gets both ends of the curve)."""
    out = Path(args.out)
    found = snapshots(out)
    if not found:
        print("probe: no snapshot yet", flush=True)
        return 1
    order = [found[0]] + ([found[-1]] if len(found) > 1 else []) + found[1:-1][::-1]
    failures = 0
    for name, export, _epochs in order:
        final = name == "final"
        for target in ["kermany"] + (["covid3"] if final else []):
            run_dir = out / "probes" / f"{target}__{name}"
            if (run_dir / "results.json").is_file():
                continue
            references = final  # the reference rows (random init, raw pixels) come with the final export's probes
            recipe = probe_recipe(export, target, args.image_size, references, final and target == "kermany", args)
            started = time.perf_counter()
            code = _sslmed_run(recipe, out / "recipes" / f"{target}__{name}.yaml", run_dir, out / "logs" / "probes.log")
            seconds = time.perf_counter() - started
            print(f"[{time.strftime('%H:%M:%S')}] probe {target} {name}: exit {code} in {seconds:.0f} s", flush=True)
            failures += code != 0
            if args.results:
                summary(args)  # every finished probe reaches the results at once
    return 1 if failures else 0


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / "results.json").is_file():
        return []
    return list(RunDir(run_dir).read_results().get("rows", []))


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    """Balanced accuracy and AUC with 95% bootstrap intervals over the test images."""
    y = row["test_predictions"]["y_true"]
    proba = row["test_predictions"]["proba"]
    acc = interval(y, [proba], "balanced_accuracy")
    auc = interval(y, [proba], "macro_auc")
    return {"balanced_accuracy": acc, "macro_auc": auc}


def loss_curve(out: Path) -> list[dict[str, float]]:
    """Mean training loss per epoch, from the step's ``logs/metrics.csv``."""
    path = out / "train" / "steps" / "corpus" / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    per_epoch: dict[int, list[float]] = {}
    with open(path, newline="") as handle:
        for record in csv.DictReader(handle):
            value = record.get("train/loss_step") or record.get("train/loss")
            if record.get("epoch") and value:
                per_epoch.setdefault(int(float(record["epoch"])), []).append(float(value))
    return [
        {"epoch": e + 1, "images_seen": (e + 1) * CORPUS_IMAGES, "loss": sum(v) / len(v)}
        for e, v in sorted(per_epoch.items())
    ]


def summary(args: argparse.Namespace) -> int:
    """``curve.json`` and ``curve.md`` from every probe that finished."""
    out = Path(args.out)
    references: dict[tuple[str, float], dict[str, Any]] = {}
    final_rows = _rows(out / "probes" / "kermany__final")
    for model in ("random_init", "raw_pixels"):
        for fraction in (0.1, 1.0):
            row = pick_row(final_rows, model, "linear", fraction)
            if row:
                references[(model, fraction)] = row
    points = []
    for name, _export, epochs in snapshots(out):
        rows = _rows(out / "probes" / f"kermany__{name}")
        if not rows:
            continue
        point: dict[str, Any] = {"snapshot": name, "epochs": epochs, "images_seen": epochs * CORPUS_IMAGES}
        for fraction in (0.1, 1.0):
            row = pick_row(rows, "sslmed", "linear", fraction)
            if row is None:
                continue
            entry: dict[str, Any] = _metrics(row)
            y = row["test_predictions"]["y_true"]
            for model in ("random_init", "raw_pixels"):
                ref = references.get((model, fraction))
                if ref and ref["test_predictions"]["y_true"] == y:
                    gain = compare(y, [row["test_predictions"]["proba"]], [ref["test_predictions"]["proba"]])
                    entry[f"gain_over_{model}"] = {"text": gain.text(), "verdict": gain.verdict, **gain.__dict__}
            point[f"linear_{fraction:g}"] = entry
        points.append(point)
    doc = {
        "what": "reference encoder: frozen linear probe on kermany's test split against images seen",
        "settings": train_recipe(args)["steps"][0],
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
        "commit": _commit(),
        "train_time": json.loads(timing.read_text()) if (timing := out / "train_time.json").is_file() else None,
        "loss_per_epoch": loss_curve(out),
        "references": {f"{model}_{fraction:g}": _metrics(row) for (model, fraction), row in sorted(references.items())},
        "curve": points,
        "final": {
            target: [
                {k: r[k] for k in ("model", "probe", "label_fraction") if k in r} | {"metrics": _metrics(r)}
                for r in _rows(out / "probes" / f"{target}__final")
                if r.get("test_predictions")
            ]
            for target in ("kermany", "covid3")
        },
    }
    results = Path(args.results) if args.results else out
    _write_json(results / "curve.json", doc)
    (results / "curve.md").write_text(render(doc) + "\n")
    recipe = out / "recipes" / "train.yaml"
    if recipe.is_file():
        shutil.copyfile(recipe, results / "train.yaml")
    return 0


def compare_recipe(method: str, args: argparse.Namespace, references: bool) -> dict[str, Any]:
    """Pre-train ``method`` on the corpus for ``--compare-epochs``, then probe on kermany."""
    step = train_recipe(args)["steps"][0] | METHODS[method]
    step.update(epochs=args.compare_epochs, snapshot_every_n_epochs=None)
    evaluation: dict[str, Any] = {
        "data": "kermany",
        "probes": ["linear"],
        "label_fractions": [0.01, 0.1, 1.0],
        "baselines": ["random_init", "raw_pixels"] if references else [],
        "finetune": {"epochs": 4, "batch_size": 64, "patience": 2, "label_fractions": [0.1]},
        "trust": False,
        "seed": 0,
    }
    return {
        "data_root": str(resolve_data_root(None)),
        "name": f"compare_{method}",
        "data": {"cxr_corpus": DATA["cxr_corpus"], "kermany": DATA["kermany"]},
        "steps": [step],
        "evaluation": evaluation,
    }


def run_key(method: str, seed: int) -> str:
    """A comparison run's name: the method for seed 0 (as the first sweep named them), else
    ``method__seedN``."""
    return method if seed == 0 else f"{method}__seed{seed}"


#: the thesis's claims, each a paired test of A against B on the same test images and seeds
CLAIMS = [
    ("simclr_mdre", "simclr_erasing", "MDRE > random erasing (SimCLR, same everything else)"),
    ("crsm", "simclr", "CRSM > SimCLR (the thesis's comparison: MDRE and the decoder together)"),
    ("crsm", "simclr_mdre", "the decoder adds to SimCLR + MDRE (CRSM's reconstruction alone)"),
]
CELLS = [("linear", 0.01), ("linear", 0.1), ("linear", 1.0), ("fine-tune", 0.1)]

#: the multi-step schedule's runs (``stages``): the method on kermany's train split after its
#: corpus export (``multistep``) or from random init (``single``), the target step the same
#: length in both; with the corpus export probed as is (the comparison's own run) they make
#: the thesis's three-way comparison
STAGED_METHODS = ("simclr", "crsm")
STAGED = [f"{method}_{kind}" for method in STAGED_METHODS for kind in ("multistep", "single")]
CLAIMS += [
    (f"{method}_multistep", f"{method}_single", f"multi-step > single step ({method}: corpus, then kermany)")
    for method in STAGED_METHODS
] + [
    (f"{method}_multistep", method, f"the kermany step adds to the corpus step ({method})") for method in STAGED_METHODS
]
#: every run name's base in the order tables show them
ORDER = [*COMPARED, *STAGED]


def comparison(args: argparse.Namespace) -> int:
    """Every method of ``--methods`` for the same images seen, probed on kermany (and covid3).

    ``--seed`` other than 0 runs the same sweep under another seed in its own folders;
    the references (random init, raw pixels) come with that seed's ``simclr`` run."""
    out = Path(args.out) / "compare"
    failures = 0
    for method in args.methods.split(","):
        key = run_key(method, args.seed)
        run_dir = out / "runs" / key
        if not (run_dir / "results.json").is_file():
            started = time.perf_counter()
            recipe = compare_recipe(method, args, references=method == "simclr")
            code = _sslmed_run(recipe, out / "recipes" / f"{key}.yaml", run_dir, out / "logs" / f"{key}.log")
            seconds = round(time.perf_counter() - started, 1)
            _write_json(out / "times" / f"{key}.json", {"seconds": seconds, "exit": code})
            print(f"[{time.strftime('%H:%M:%S')}] compare {key}: exit {code} in {seconds:.0f} s", flush=True)
            failures += code != 0
        export = run_dir / "steps" / "corpus"
        covid = out / "runs" / f"covid3__{key}"
        if (export / "backbone.json").is_file() and not (covid / "results.json").is_file():
            recipe = probe_recipe(export, "covid3", args.image_size, method == "simclr", False, args, method)
            code = _sslmed_run(recipe, out / "recipes" / f"covid3__{key}.yaml", covid, out / "logs" / "covid3.log")
            failures += code != 0
        if args.results:
            try:
                comparison_summary(args)
            except Exception as error:  # a summary bug must not stop the sweep; compare-summary redoes it
                print(f"compare-summary failed: {type(error).__name__}: {error}", flush=True)
    return 1 if failures else 0


def staged_recipe(method: str, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """``method`` on kermany's train split for ``--target-epochs``: from the comparison's
    corpus export of the same seed (``multistep``) or from random init (``single``); then
    the comparison's evaluation (references left out: the evaluation seed is the
    comparison's, so they are the rows its ``simclr`` run already has)."""
    recipe = compare_recipe(method, args, references=False)
    step = recipe["steps"][0]
    step.update(name="target", data="kermany", epochs=args.target_epochs)
    if kind == "multistep":
        export = Path(args.out) / "compare" / "runs" / run_key(method, args.seed) / "steps" / "corpus"
        step["init_from"] = str(export)
    recipe["name"] = f"{method}_{kind}"
    recipe["data"] = {"kermany": DATA["kermany"]}
    return recipe


def stages(args: argparse.Namespace) -> int:
    """The multi-step claim at the comparison's budget: for each of ``--methods`` (SimCLR,
    CRSM) whose corpus run of ``--seed`` has finished, a kermany step after it and the same
    step from random init, each probed as the comparison probes."""
    out = Path(args.out) / "compare"
    failures = 0
    for method in args.methods.split(","):
        if method not in STAGED_METHODS:
            raise SystemExit(f"stages: --methods takes {', '.join(STAGED_METHODS)}, not {method!r}")
        export = out / "runs" / run_key(method, args.seed) / "steps" / "corpus"
        for kind in ("multistep", "single"):
            key = run_key(f"{method}_{kind}", args.seed)
            run_dir = out / "runs" / key
            if (run_dir / "results.json").is_file():
                continue
            if kind == "multistep" and not (export / "backbone.json").is_file():
                print(f"stages: {key} needs the corpus run {export} (run compare first)", flush=True)
                failures += 1
                continue
            started = time.perf_counter()
            recipe = staged_recipe(method, kind, args)
            code = _sslmed_run(recipe, out / "recipes" / f"{key}.yaml", run_dir, out / "logs" / f"{key}.log")
            seconds = round(time.perf_counter() - started, 1)
            _write_json(out / "times" / f"{key}.json", {"seconds": seconds, "exit": code})
            print(f"[{time.strftime('%H:%M:%S')}] stages {key}: exit {code} in {seconds:.0f} s", flush=True)
            failures += code != 0
            if args.results:
                comparison_summary(args)
    return 1 if failures else 0


def _predictions(out: Path, results: Path) -> dict[str, Any]:
    """Every finished run's test predictions per cell, ``{run: {target/probe_fraction: {y_true,
    proba}}}``, merged with those a previous sweep left in ``results/predictions.json`` (run
    folders do not outlive a machine; the predictions do, so that paired tests can be made
    across sessions)."""
    path = results / "predictions.json"
    kept: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    # an earlier sweep also kept each run's own rows under their model names (``sslmed:corpus@run``):
    # the same numbers as ``run``, so only the current names are kept
    kept = {name: cells for name, cells in kept.items() if _is_current_name(name)}
    for run_dir in sorted((out / "runs").glob("*")):
        target, key = (
            ("covid3", run_dir.name[len("covid3__") :])
            if run_dir.name.startswith("covid3__")
            else ("kermany", run_dir.name)
        )
        rows = _rows(run_dir)
        for model in ("sslmed", *REFERENCES):
            name = key if model == "sslmed" else f"{model}@{key}"
            for probe_name, fraction in CELLS:
                row = pick_row(rows, model, probe_name, fraction)
                if row and row.get("test_predictions"):
                    cell = {k: row["test_predictions"][k] for k in ("y_true", "proba")}
                    kept.setdefault(name, {})[f"{target}/{probe_name}_{fraction:g}"] = cell
    return kept


REFERENCES = ("random_init", "raw_pixels")


def _is_current_name(name: str) -> bool:
    """A run (``method`` or ``method__seedN``) or a reference of one (``random_init@run``)."""
    model, _, run = name.rpartition("@")
    return not model or model in REFERENCES


def _is_shown(name: str) -> bool:
    """Every run, and the references once per seed: those of its ``simclr`` run (every run's
    fine-tuning also fine-tunes the random init, the same network as ``simclr``'s, seed for seed)."""
    model, _, run = name.rpartition("@")
    return not model or (model in REFERENCES and _split_key(run)[0] == "simclr")


def references_of(predictions: dict[str, Any], model: str, seed: int) -> dict[str, Any]:
    """The ``model`` reference's cells for a run of ``seed``: those of that seed's ``simclr``
    run, else of any seed's. The evaluation seed is the same (0) in every run, and with it
    the random-init network, the label subsets and the raw-pixel probe, so a reference does
    not depend on the pre-training seed (seeds 0 and 1 gave identical rows)."""
    own = predictions.get(f"{model}@{run_key('simclr', seed)}")
    if own:
        return dict(own)
    for name in sorted(predictions):
        if name.startswith(f"{model}@simclr"):
            return dict(predictions[name])
    return {}


def _split_key(name: str) -> tuple[str, int]:
    method, _, seed = name.partition("__seed")
    return method, int(seed or 0)


def claims(predictions: dict[str, Any]) -> list[dict[str, Any]]:
    """The thesis's claims as paired tests over every seed both methods have, per cell."""
    found = []
    for a, b, claim in CLAIMS:
        seeds_a = {_split_key(k)[1] for k in predictions if _split_key(k)[0] == a}
        seeds_b = {_split_key(k)[1] for k in predictions if _split_key(k)[0] == b}
        seeds = sorted(seeds_a & seeds_b)
        if not seeds:
            continue
        cells = {}
        for cell in sorted({c for s in seeds for c in predictions[run_key(a, s)]}):
            pairs = [(predictions[run_key(a, s)].get(cell), predictions[run_key(b, s)].get(cell)) for s in seeds]
            pairs = [(x, y) for x, y in pairs if x and y and x["y_true"] == y["y_true"]]
            if not pairs:
                continue
            y_true = pairs[0][0]["y_true"]
            if any(x["y_true"] != y_true for x, _ in pairs):
                continue
            gain = compare(y_true, [x["proba"] for x, _ in pairs], [y["proba"] for _, y in pairs])
            cells[cell] = {"text": gain.text(), "verdict": gain.verdict, "seeds": len(pairs)}
        found.append({"claim": claim, "a": a, "b": b, "seeds": seeds, "cells": cells})
    return found


def comparison_summary(args: argparse.Namespace) -> int:
    """``comparison.json``, ``comparison.md`` and ``predictions.json``: each finished method
    (and seed) next to the references of its seed, and the thesis's claims as paired tests."""
    out = Path(args.out) / "compare"
    results = Path(args.results) if args.results else out
    predictions = _predictions(out, results)
    _write_json(results / "predictions.json", predictions)
    doc: dict[str, Any] = {"settings": {k: v for k, v in compare_recipe("simclr", args, True)["steps"][0].items()}}
    doc["settings"].pop("seed", None)
    doc["commit"] = _commit()
    table: dict[str, Any] = {}
    # a run finished on another machine keeps the time its summary recorded there
    previous = results / "comparison.json"
    recorded = json.loads(previous.read_text()).get("table", {}) if previous.is_file() else {}
    shown = [name for name in predictions if _is_shown(name)]
    for name in sorted(shown, key=lambda k: (k.count("@"), ORDER.index(_split_key(k.split("@")[-1])[0]), k)):
        entry = table.setdefault(name, {})
        key = name.split("@")[-1]
        time_file = out / "times" / f"{key}.json"
        if "@" not in name and time_file.is_file():
            entry["seconds"] = json.loads(time_file.read_text())["seconds"]
        elif "seconds" in recorded.get(name, {}):
            entry["seconds"] = recorded[name]["seconds"]
        seed = _split_key(key)[1]
        for cell, pred in predictions[name].items():
            metrics: dict[str, Any] = _metrics({"test_predictions": pred})
            if "@" not in name:
                for model in REFERENCES:
                    ref = references_of(predictions, model, seed).get(cell)
                    if ref and ref["y_true"] == pred["y_true"]:
                        gain = compare(pred["y_true"], [pred["proba"]], [ref["proba"]])
                        metrics[f"gain_over_{model}"] = {"text": gain.text(), "verdict": gain.verdict}
            entry[cell] = metrics
    doc["table"] = table
    doc["claims"] = claims(predictions)
    _write_json(results / "comparison.json", doc)
    columns = [f"kermany/{p}_{f:g}" for p, f in CELLS] + ["covid3/linear_0.1", "covid3/linear_1"]
    lines = [
        "# Method comparison at the same images seen",
        "",
        "Balanced accuracy [95% bootstrap interval over test images]; gains paired against the"
        " references of the same seed (`random_init@simclr__seedN`);"
        f" settings `{json.dumps(doc['settings'])}`.",
        "",
        "| run | run s (pre-training + kermany probes) | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for method, entry in table.items():
        cells = [method, str(entry.get("seconds", "-"))]
        for column in columns:
            cell = entry.get(column)
            if not cell:
                cells.append("-")
                continue
            text = _fmt(cell["balanced_accuracy"])
            gain = cell.get("gain_over_random_init")
            cells.append(text + (f"; vs random init {gain['text']}" if gain else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if doc["claims"]:
        lines += ["", "## The thesis's claims, paired (A - B, balanced accuracy)", ""]
        lines += ["| claim | seeds | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
        for claim in doc["claims"]:
            row = [claim["claim"], ",".join(map(str, claim["seeds"]))]
            for column in columns:
                cell = claim["cells"].get(column)
                row.append(f"{cell['text']} ({cell['verdict']})" if cell else "-")
            lines.append("| " + " | ".join(row) + " |")
    (results / "comparison.md").write_text("\n".join(lines) + "\n")
    return 0


def _fmt(triple: Any) -> str:
    mean, low, high = triple
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def render(doc: dict[str, Any]) -> str:
    lines = [
        "# Reference encoder: accuracy against images seen",
        "",
        f"Commit `{doc['commit'][:10]}`; settings: `{json.dumps(doc['settings'], sort_keys=True)}`.",
        "",
        "kermany official test split (624 images), frozen linear probe, balanced class weights;",
        "balanced accuracy and macro AUC with 95% bootstrap intervals over test images; gains paired.",
        "",
        "| snapshot | epochs | images seen | linear 10%: bal. acc | AUC | gain over random init | linear 100%: bal. acc"
        " | AUC | gain over random init | gain over raw pixels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in doc["curve"]:
        cells = [p["snapshot"], str(p["epochs"]), f"{p['images_seen']:,}"]
        for fraction in ("0.1", "1"):
            e = p.get(f"linear_{fraction}")
            if not e:
                cells += ["-", "-", "-"] + (["-"] if fraction == "1" else [])
                continue
            cells += [_fmt(e["balanced_accuracy"]), _fmt(e["macro_auc"])]
            cells.append(e.get("gain_over_random_init", {}).get("text", "-"))
            if fraction == "1":
                cells.append(e.get("gain_over_raw_pixels", {}).get("text", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    if doc["references"]:
        lines += ["", "References (computed once, with the final probe):", ""]
        for name, m in doc["references"].items():
            lines.append(f"- {name}: balanced accuracy {_fmt(m['balanced_accuracy'])}, AUC {_fmt(m['macro_auc'])}")
    for target, rows in doc["final"].items():
        if rows:
            lines += ["", f"Final export on {target}:", ""]
            for r in rows:
                m = r["metrics"]
                lines.append(
                    f"- {r['model']} {r['probe']} {float(r['label_fraction']):.0%}: balanced accuracy "
                    f"{_fmt(m['balanced_accuracy'])}, AUC {_fmt(m['macro_auc'])}"
                )
    if doc["loss_per_epoch"]:
        lines += ["", "Training loss per epoch: " + ", ".join(f"{e['loss']:.3f}" for e in doc["loss_per_epoch"])]
    if doc["train_time"]:
        took = doc["train_time"]
        lines += ["", f"Pre-training wall time: {took['seconds']:.0f} s (exit {took['exit']})."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "probe", "summary", "all", "compare", "compare-summary", "stages"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", help="where summary writes curve.json/curve.md (default: --out)")
    parser.add_argument("--method", choices=sorted(METHODS), default="simclr")
    parser.add_argument("--epochs", type=int, default=46)
    parser.add_argument("--snapshot-every", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=-1, help="a smoke test's cap on optimiser steps")
    parser.add_argument("--compare-epochs", type=int, default=10, help="10 x 21,708 = 217,080 images per method")
    parser.add_argument("--methods", default=",".join(COMPARED), help="compare, stages: which, in order")
    parser.add_argument("--target-epochs", type=int, default=10, help="stages: epochs of the kermany step")
    args = parser.parse_args()
    if args.command == "compare":
        return comparison(args)
    if args.command == "compare-summary":
        return comparison_summary(args)
    if args.command == "stages":
        return stages(args)
    if args.command == "train":
        return train(args)
    if args.command == "probe":
        return probe(args)
    if args.command == "summary":
        return summary(args)
    code = train(args)
    probe(args)
    summary(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
