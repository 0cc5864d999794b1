"""Every experiment of the thesis, on both targets, then one comparison report.

Runs simclr, simclr_erasing, simclr_mdre, crsm, crsm_multistep and crsm_transfer
(recipes/*.yaml) with covid3 and with PneumoniaMNIST as the target set, at a chosen
scale, each as its own `sslmed run` (several at once with --jobs), then
`sslmed report` over all of them. A finished run is skipped when the script is started
again with the same --out, so an interrupted sweep continues where it stopped.

    .venv/bin/python bench/thesis_experiments.py --scale smoke --out /tmp/thesis   # CPU, minutes
    .venv/bin/python bench/thesis_experiments.py --scale gpu --out runs/thesis     # one H100/H200 + 16 cores

Scales:
  smoke  16 px, 2 optimiser steps per step, probe fitted on the small validation
         split: checks that everything runs end to end, numbers mean nothing.
  cpu    the recipes as shipped (32 px, a few epochs).
  gpu    64 px, batch 256, bf16, DataLoader workers, label fractions 1/10/100%,
         sized for all 12 runs in about 8 minutes on one H200 with 16 CPU cores.

The reference rows (random init, supervised from scratch) are computed once per target,
in the simclr run, and shown for every method in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ["simclr", "simclr_erasing", "simclr_mdre", "crsm", "crsm_multistep", "crsm_transfer"]
TARGETS = ["covid3", "pneumoniamnist"]
#: the report's names for the thesis's methods, and the claims it checks
LABELS = REPO / "bench" / "thesis_labels.yaml"


def target_overrides(recipe: str, target: str) -> list[str]:
    """Point a recipe (written for covid3, transfer for PneumoniaMNIST) at ``target``."""
    if recipe == "crsm_transfer":
        corpus = "corpus_no_covid3" if target == "covid3" else "corpus_no_pneumoniamnist"
        return [f"steps.0.data={corpus}", f"evaluation.data={target}"]
    if target == "covid3":
        return []
    last = 1 if recipe == "crsm_multistep" else 0
    return [f"steps.{last}.data={target}", f"evaluation.data={target}"]


def scale_overrides(scale: str, recipe: str, target: str, jobs: int) -> list[str]:
    """Sizes for the scale; epochs are per step (corpus step / target step)."""
    multistep = recipe == "crsm_multistep"
    if scale == "smoke":
        out = [
            "defaults.image_size=16",
            "defaults.batch_size=16",
            "defaults.max_steps=2",
            "defaults.log_every_n_steps=1",
            "defaults.accelerator=cpu",
            "defaults.checkpoint_every_n_steps=100",
            "evaluation.train_split=val",
            "evaluation.probes=[linear]",
            "evaluation.label_fractions=[0.5,1.0]",
            "evaluation.supervised.max_steps=2",
            "evaluation.supervised.batch_size=16",
        ]
        return out
    if scale == "cpu":
        return []
    workers = max(2, 15 // jobs)
    target_epochs = {"covid3": 40, "pneumoniamnist": 12}[target]
    out = [
        "defaults.image_size=64",
        "defaults.batch_size=256",
        f"defaults.num_workers={workers}",
        "defaults.precision=bf16-mixed",
        "defaults.optimizer.lr=0.003",
        "defaults.log_every_n_steps=5",
        "defaults.checkpoint_every_n_steps=200",
        "defaults.schedule.warmup_epochs=1",
        "evaluation.label_fractions=[0.01,0.1,1.0]",
        "evaluation.batch_size=512",
        "evaluation.supervised.epochs=20",
        "evaluation.supervised.batch_size=128",
        "evaluation.supervised.lr=0.002",
    ]
    if recipe.startswith("crsm"):
        out.append("defaults.objective.warmup_steps=50")  # lambda warm-up (CRSM only)
    if recipe == "crsm_transfer":
        out.append("steps.0.epochs=6")
    elif multistep:
        out += ["steps.0.epochs=4", f"steps.1.epochs={target_epochs // 2}"]
    else:
        out.append(f"steps.0.epochs={target_epochs}")
    return out


def experiments(targets: list[str], recipes: list[str], seeds: list[int], scale: str, jobs: int) -> list[dict]:
    plan = []
    for target in targets:
        for recipe in recipes:
            for seed in seeds:
                overrides = target_overrides(recipe, target) + scale_overrides(scale, recipe, target, jobs)
                references = recipe == recipes[0] and seed == seeds[0]
                overrides.append(
                    "evaluation.baselines=[random_init,supervised]" if references else "evaluation.baselines=[]"
                )
                if seed != 0:
                    overrides += [f"defaults.seed={seed}", f"evaluation.seed={seed}"]
                plan.append(
                    {
                        "id": f"{recipe}__{target}__seed{seed}",
                        "recipe": recipe,
                        "target": target,
                        "seed": seed,
                        "overrides": overrides,
                    }
                )
    return plan


def run_one(
    experiment: dict, out: Path, log_dir: Path, deadline: float | None = None, threads: int | None = None
) -> dict:
    """``sslmed run`` one experiment into ``out/runs/<id>/`` (skipped when already done,
    or not started once ``deadline``, a ``time.monotonic()`` value, has passed)."""
    runs_dir = out / "runs" / experiment["id"]
    done = sorted(runs_dir.glob("*/*/results.json"))
    if done:
        return {**experiment, "status": "skipped (done)", "run_dir": str(done[-1].parent), "seconds": 0.0}
    if deadline is not None and time.monotonic() > deadline:
        print(f"[{time.strftime('%H:%M:%S')}] {experiment['id']}: not started (--deadline passed)", flush=True)
        return {**experiment, "status": "not started (deadline)", "run_dir": None, "seconds": 0.0}
    command = [
        sys.executable,
        "-m",
        "sslmed.app.cli",
        "run",
        str(REPO / "recipes" / f"{experiment['recipe']}.yaml"),
        "--runs-dir",
        str(runs_dir),
    ]
    if any(runs_dir.glob("*/*/recipe.yaml")):
        command.append("--resume")  # continue an interrupted run of this experiment
    for item in experiment["overrides"]:
        command += ["--set", item]
    start = time.perf_counter()
    with open(log_dir / f"{experiment['id']}.log", "w") as log:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:  # several runs at once: keep BLAS/OpenMP from oversubscribing the cores
            env.update(
                {"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            )
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    seconds = round(time.perf_counter() - start, 1)
    found = sorted(runs_dir.glob("*/*/results.json"))
    status = "ok" if code == 0 and found else f"FAILED (exit {code}; see {log_dir / (experiment['id'] + '.log')})"
    print(f"[{time.strftime('%H:%M:%S')}] {experiment['id']}: {status} in {seconds:.0f} s", flush=True)
    return {
        **experiment,
        "status": status,
        "run_dir": str(found[-1].parent) if found else None,
        "seconds": seconds,
        "command": " ".join(command),
    }


def machine() -> dict:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=5
        ).stdout.strip()
        info["uncommitted_changes"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO, timeout=5
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=["smoke", "cpu", "gpu"], default="smoke")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder: runs/, logs/, report/, experiments.json"
    )
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: 1; 3 at --scale gpu)")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--seeds", default="0", help="comma-separated; several seeds give mean ± CI over seeds")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which no new run starts (the report covers the finished ones)",
    )
    args = parser.parse_args()
    jobs = args.jobs or (3 if args.scale == "gpu" else 1)
    targets, recipes = args.targets.split(","), args.recipes.split(",")
    unknown = sorted(set(targets) - set(TARGETS)) + sorted(set(recipes) - set(RECIPES))
    if unknown:
        parser.error(f"unknown target(s)/recipe(s): {', '.join(unknown)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out.resolve()
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    plan = experiments(targets, recipes, seeds, args.scale, jobs)
    print(f"{len(plan)} runs at scale {args.scale}, {jobs} at a time -> {out}", flush=True)
    start = time.perf_counter()
    # the runs that compute the reference rows first, so their slower evaluation overlaps the rest
    ordered = sorted(plan, key=lambda e: "evaluation.baselines=[]" in e["overrides"])
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        deadline = time.monotonic() + args.deadline if args.deadline else None
        threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
        done = list(pool.map(lambda e: run_one(e, out, log_dir, deadline, threads), ordered))
    sweep_seconds = round(time.perf_counter() - start, 1)
    record = {
        "scale": args.scale,
        "jobs": jobs,
        "machine": machine(),
        "sweep_seconds": sweep_seconds,
        "command": " ".join([sys.executable] + sys.argv),
        "runs": done,
    }
    (out / "experiments.json").write_text(json.dumps(record, indent=2))
    finished = [e["run_dir"] for e in done if e["run_dir"]]
    failed = [e for e in done if e["run_dir"] is None]
    print(f"sweep: {len(finished)} of {len(done)} runs finished in {sweep_seconds:.0f} s", flush=True)
    if finished:
        from sslmed.report import Labels, build_report

        gpu = record["machine"].get("gpu") or "CPU"
        title = (
            f"Thesis experiments ({args.scale} scale, {gpu}, {record['machine']['cpus']} CPUs, "
            f"sweep {sweep_seconds:.0f} s)"
        )
        path = build_report(
            finished,
            out / "report",
            samples=args.bootstrap,
            title=title,
            command=record["command"],
            labels=Labels.from_file(LABELS),
        )
        print(f"report: {path}", flush=True)
    for experiment in failed:
        print(f"FAILED: {experiment['id']}: {experiment['status']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
