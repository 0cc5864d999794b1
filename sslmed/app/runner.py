"""The multi-step schedule: steps in order, ``init_from`` hand-off, then evaluation once.

The run folder (:class:`sslmed.artifacts.rundir.RunDir`) gets the resolved recipe, the manifest,
the data splits, one ``steps/<step>/`` per step (trained by :mod:`sslmed.training.engine`) and
the step timings; :func:`sslmed.app.results.evaluate_run` then writes the results and the
model export.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sslmed import __version__
from sslmed.app.prepare import build_sources, load_recipe_file, load_run_recipe
from sslmed.app.results import RunResult, evaluate_run
from sslmed.artifacts.rundir import RunDir, write_run_data
from sslmed.core.errors import RunInterrupted, UsageError
from sslmed.core.files import remove_partial_files
from sslmed.core.plugins import plugin_infos
from sslmed.core.recipe import Recipe, looks_like_path
from sslmed.data.catalog import data_copies
from sslmed.data.sources import ImageSource
from sslmed.training.engine import backbone_identity, is_worker_process, stopped_by_signal, train_step
from sslmed.training.init_from import ExternalBackbone, check_external

log = logging.getLogger(__name__)

RUN_DIR_ENV = "SSLMED_RUN_DIR"  # hands the run folder to DDP worker processes


def external_inits(recipe: Recipe) -> dict[str, ExternalBackbone]:
    """Steps whose ``init_from`` is another run's backbone export (a path), each found,
    checked against the step's backbone and channels, and fingerprinted."""
    names = {s.name for s in recipe.steps}
    return {
        step.name: check_external(step.init_from, backbone_identity(step))
        for step in recipe.steps
        if step.init_from and step.init_from not in names and looks_like_path(step.init_from)
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        commit = out.stdout.strip()
        return commit if out.returncode == 0 and len(commit) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for package in ("torch", "torchvision", "lightning", "lightly", "scikit-learn", "pydantic", "pluggy"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found


def manifest(recipe: Recipe, sources: dict[str, ImageSource]) -> dict[str, Any]:
    """What a reader needs to reproduce the run."""
    return {
        "sslmed": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": _versions(),
        "plugins": [{"name": p.name, "version": p.version} for p in plugin_infos() if not p.error],
        "data": {alias: {"fingerprint": s.fingerprint(), **s.summary()} for alias, s in sources.items()},
        "data_copies": data_copies(recipe),
        "seeds": {s.name: s.seed for s in recipe.steps},
    }


def recipe_document(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (what ``recipe.yaml`` in the run folder holds)."""
    return recipe.model_dump(mode="json")


def resolve_resume(recipe: Recipe, runs_dir: Path, resume: str) -> Path:
    """The run folder to continue: ``latest`` under ``runs/<recipe>/``, or a given path."""
    if resume == "latest":
        run = RunDir.latest(runs_dir, recipe.name)
        if run is None:
            raise UsageError(f"--resume: no earlier run of recipe {recipe.name!r} under {runs_dir / recipe.name}")
    else:
        run = RunDir(resume)
        if not run.is_run():
            raise UsageError(f"--resume {resume}: not a run folder (no recipe.yaml)")
    for folder in (run.path, run.model_dir):  # results or a model export killed before its rename
        remove_partial_files(folder)
    saved = recipe_document(load_run_recipe(run)[0])  # validated: settings added since then take their defaults
    current = recipe_document(recipe)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise UsageError(
            f"--resume: the recipe differs from the one {run.path} started with (changed: {', '.join(changed)}); "
            "start a new run instead"
        )
    return run.path


def resume_command(run: RunDir) -> str:
    """The command that continues ``run``: its own ``recipe.yaml`` (the resolved recipe,
    ``--set`` overrides included), so it works however the run was started."""
    return f"sslmed run {shlex.quote(str(run.recipe_file))} --resume {shlex.quote(str(run.path))}"


@contextlib.contextmanager
def resume_hint(recipe_path: str | Path, run: RunDir) -> Iterator[None]:
    """Add to a :class:`RunInterrupted` the command that continues the run
    (:func:`resume_command`; ``recipe_path`` with ``--set`` would be refused as another recipe)."""
    try:
        yield
    except RunInterrupted as exc:
        raise RunInterrupted(
            f"{exc}; the run is not finished. Continue it with: {resume_command(run)}",
            exc.signal_number,
        ) from None


def run_recipe(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    runs_dir: str | Path = "runs",
    resume: str | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> RunResult | None:
    """Run a recipe: every step, then evaluation. Returns None in DDP worker processes.

    ``run_dir`` names the run folder instead of a new timestamped one under
    ``runs_dir``: a new run starts there, or the run already there continues (its
    recipe must match). Every machine of a multi-node job is given the same one.
    """
    recipe, registry = load_recipe_file(path, overrides)
    sources = build_sources(recipe, registry)
    external = external_inits(recipe)  # checked before anything is written or trained
    runs_dir = Path(runs_dir)
    if is_worker_process() and os.environ.get(RUN_DIR_ENV):
        run = RunDir(os.environ[RUN_DIR_ENV])  # DDP worker: the folder rank 0 made
    elif run_dir is not None:
        run = RunDir(run_dir)
        if not is_worker_process() and run.is_run():
            run = RunDir(resolve_resume(recipe, runs_dir, str(run_dir)))  # same recipe, or an error
    elif resume:
        run = RunDir(resolve_resume(recipe, runs_dir, resume))
        log.info("resuming %s", run.path)
    else:
        run = RunDir.new(runs_dir, recipe.name)
    if not is_worker_process():
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_recipe(recipe_document(recipe))
        if not run.manifest_file.exists():
            record = manifest(recipe, sources)
            if external:
                record["init_from"] = {name: export.record() for name, export in external.items()}
            run.write_manifest(record)
            write_run_data(run, sources)  # splits/<alias>.csv (pinnable) and skipped/<alias>.csv
        os.environ[RUN_DIR_ENV] = str(run.path.resolve())
        log.info("run folder: %s", run.path)

    timings = {}
    try:
        for step in recipe.steps:
            step_dir = run.step(step.name)
            if step_dir.is_done():
                log.info("step %s: already done, skipped", step.name)
                continue
            init = external[step.name].path if step.name in external else None
            if step.init_from and init is None:
                init = run.step(step.init_from).path
            log.info(
                "step %s: %s on %s (%s), %d epoch(s)",
                step.name,
                step.objective.name,
                step.data,
                step.split,
                step.epochs,
            )
            started = time.perf_counter()
            with resume_hint(path, run):
                train_step(step, sources[step.data], step_dir.path, registry, init_from=init, progress=progress)
            timings[step.name] = round(time.perf_counter() - started, 1)
    finally:
        if not is_worker_process():
            os.environ.pop(RUN_DIR_ENV, None)
    if is_worker_process():
        return None
    result = RunResult(run.path)
    if recipe.evaluation is not None:
        with resume_hint(path, run), stopped_by_signal("the evaluation"):  # fine-tuning runs on Lightning
            result = evaluate_run(run, recipe, registry, sources)
    if timings:
        run.write_timings(timings)
    return result
