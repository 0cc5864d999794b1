"""The run folder: every name in it, its atomic writers, and the one way to load a run.

``runs/<recipe>/<timestamp>/`` holds (see ``docs/reference/run-folder.md``)::

    recipe.yaml  manifest.json  timings.json  splits/<data>.csv  skipped/<data>.csv
    steps/<step>/checkpoints/last.ckpt  steps/<step>/logs/metrics.csv
    steps/<step>/backbone.{safetensors,json}  steps/<step>/<extra>.safetensors
    results.{json,csv,md}  model/model.{safetensors,json}

Code that reads or writes a run folder asks :class:`RunDir` (or :class:`StepDir`) for
the path instead of spelling a file name, as Lightning's ``ModelCheckpoint`` owns the
names of its checkpoints. Every write goes through a temporary file and a rename, so a
run that is killed never leaves a half-written file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sslmed.core.files import atomic_write_json, atomic_write_text
from sslmed.data.sources import ImageSource
from sslmed.data.splits import skipped_file_text, split_file_text

if TYPE_CHECKING:
    pass

RECIPE = "recipe.yaml"
MANIFEST = "manifest.json"
TIMINGS = "timings.json"
RESULTS_JSON, RESULTS_CSV, RESULTS_MD = "results.json", "results.csv", "results.md"
RELIABILITY = "reliability.png"  # the exported probe's reliability diagram (before/after calibration)
STEPS, MODEL, SPLITS, SKIPPED = "steps", "model", "splits", "skipped"
#: inside a step folder: Lightning's checkpoints and the CSV logger's folder
CHECKPOINTS, LAST_CHECKPOINT, LOGS, SNAPSHOTS = "checkpoints", "last.ckpt", "logs", "snapshots"
#: an export: ``<prefix>.safetensors`` (weights) beside ``<prefix>.json`` (what they are)
BACKBONE, MODEL_EXPORT = "backbone", "model"
WEIGHTS_SUFFIX, META_SUFFIX = ".safetensors", ".json"


# ---------------------------------------------------------------------- layout


def weights_file(directory: Path, prefix: str) -> Path:
    """``<directory>/<prefix>.safetensors``: the tensors of an export."""
    return Path(directory) / f"{prefix}{WEIGHTS_SUFFIX}"


def meta_file(directory: Path, prefix: str) -> Path:
    """``<directory>/<prefix>.json``: the description of an export."""
    return Path(directory) / f"{prefix}{META_SUFFIX}"


class StepDir:
    """``steps/<name>/``: one step's Lightning checkpoints, logs and backbone export."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        """Where Lightning's ``ModelCheckpoint`` writes."""
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.ckpt``: what an interrupted step resumes from."""
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def metrics_csv(self) -> Path:
        """The CSV logger's loss terms."""
        return self.path / LOGS / "metrics.csv"

    @property
    def backbone_weights(self) -> Path:
        return weights_file(self.path, BACKBONE)

    @property
    def backbone_meta(self) -> Path:
        return meta_file(self.path, BACKBONE)

    @property
    def snapshots(self) -> Path:
        """``snapshots/``: backbone exports taken along the way (``snapshot_every_n_epochs``)."""
        return self.path / SNAPSHOTS

    def snapshot(self, epoch: int) -> Path:
        """``snapshots/epoch<E>/``: the backbone at the end of epoch ``epoch`` (counted from 1)."""
        return self.snapshots / f"epoch{epoch:03d}"

    def extra_weights(self, name: str) -> Path:
        """``<name>.safetensors``: a module exported beside the backbone (a CRSM decoder)."""
        return weights_file(self.path, name)

    def is_done(self) -> bool:
        """A step is done once its backbone export exists (written last, atomically)."""
        return self.backbone_weights.is_file() and self.backbone_meta.is_file()


class RunDir:
    """One run folder: the paths in it, its writers and readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def new(cls, runs_dir: str | Path, name: str) -> RunDir:
        """A fresh ``<runs_dir>/<name>/<date-time>[-n]`` (not created yet)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        candidate, n = Path(runs_dir) / name / stamp, 1
        while candidate.exists():
            n += 1
            candidate = Path(runs_dir) / name / f"{stamp}-{n}"
        return cls(candidate)

    @classmethod
    def latest(cls, runs_dir: str | Path, name: str) -> RunDir | None:
        """The newest run of recipe ``name`` under ``runs_dir``, if any."""
        runs = sorted(p for p in (Path(runs_dir) / name).glob("*") if (p / RECIPE).is_file())
        return cls(runs[-1]) if runs else None

    # paths
    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST

    @property
    def timings_file(self) -> Path:
        return self.path / TIMINGS

    @property
    def results_json(self) -> Path:
        return self.path / RESULTS_JSON

    @property
    def results_csv(self) -> Path:
        return self.path / RESULTS_CSV

    @property
    def results_md(self) -> Path:
        return self.path / RESULTS_MD

    @property
    def reliability_figure(self) -> Path:
        return self.path / RELIABILITY

    @property
    def model_dir(self) -> Path:
        """``model/``: the classifier export that predict and the demo read."""
        return self.path / MODEL

    def step(self, name: str) -> StepDir:
        return StepDir(self.path / STEPS / name)

    def split_file(self, alias: str) -> Path:
        return self.path / SPLITS / f"{alias}.csv"

    def skipped_file(self, alias: str) -> Path:
        return self.path / SKIPPED / f"{alias}.csv"

    # state
    def is_run(self) -> bool:
        """True once the run has written its recipe."""
        return self.recipe_file.is_file()

    def has_results(self) -> bool:
        return self.results_json.is_file()

    # writers
    def write_recipe(self, document: dict[str, Any]) -> None:
        atomic_write_text(self.recipe_file, yaml.safe_dump(document, sort_keys=False))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_file, manifest)

    def write_timings(self, steps_seconds: dict[str, float]) -> None:
        atomic_write_json(self.timings_file, {"steps_seconds": steps_seconds})

    # readers
    def read_recipe_document(self) -> dict[str, Any]:
        """``recipe.yaml`` as plain data; ``{}`` when absent."""
        if not self.recipe_file.is_file():
            return {}
        return yaml.safe_load(self.recipe_file.read_text()) or {}

    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON file of the run; ``{}`` when absent."""
        return json.loads(path.read_text()) if path.is_file() else {}

    def read_results(self) -> dict[str, Any]:
        return self.read_json(self.results_json)

    def read_manifest(self) -> dict[str, Any]:
        return self.read_json(self.manifest_file)

    def read_timings(self) -> dict[str, Any]:
        return self.read_json(self.timings_file)


def write_run_data(run: RunDir, sources: Mapping[str, ImageSource]) -> None:
    """Record each source's splits (``splits/<alias>.csv``, pinnable with ``split_file:``)
    and the files it left out (``skipped/<alias>.csv``) in the run folder."""
    for alias, source in sources.items():
        atomic_write_text(run.split_file(alias), split_file_text(source))
        if source.skipped:
            atomic_write_text(run.skipped_file(alias), skipped_file_text(source))
