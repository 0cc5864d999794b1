"""Backbones made elsewhere: ``init_from`` given a path instead of a step name.

A step may start from the backbone export of another run (``steps/<step>/`` of any
run folder, or the ``backbone.safetensors`` / ``backbone.json`` pair itself), so a
corpus is pre-trained once and every target run reuses it. Before anything trains,
the export is found, checked against the step's backbone and channels, and
fingerprinted (sha256 of its weights) for the run's manifest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslmed.artifacts.exports import read_backbone_meta
from sslmed.artifacts.rundir import BACKBONE, StepDir, meta_file, weights_file
from sslmed.core.errors import CheckpointError, UsageError

EXPORT_FILES = (weights_file(Path(), BACKBONE).name, meta_file(Path(), BACKBONE).name)


def export_dir(value: str, relative_to: Path | None = None) -> Path:
    """The folder holding ``backbone.safetensors`` and ``backbone.json`` that ``value``
    points at: that folder itself, or one of the two files. Relative paths start from
    ``relative_to`` (default: the working folder)."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (relative_to or Path.cwd()) / path
    folder = path.parent if path.name in EXPORT_FILES else path
    if not path.exists():
        raise UsageError(f"init_from {value}: no such file or folder ({path})")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]  # both, as StepDir.is_done wants
    if missing:
        hint = ""
        if (folder / "steps").is_dir():
            steps = sorted(p.name for p in (folder / "steps").iterdir() if StepDir(p).backbone_meta.is_file())
            hint = f"; a run folder: name one of its steps, e.g. {value.rstrip('/')}/steps/{steps[0]}" if steps else ""
        raise UsageError(
            f"init_from {value}: not a backbone export (missing {', '.join(missing)} in {folder}){hint}; "
            "give a step folder of a finished run (runs/<recipe>/<run>/steps/<step>) or its backbone.safetensors"
        )
    return folder


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ExternalBackbone:
    """A checked backbone export of another run, as the manifest records it."""

    path: Path
    sha256: str
    meta: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: where, which weights, and what made them."""
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "backbone": self.meta.get("backbone"),
            "in_channels": self.meta.get("in_channels"),
            "image_size": self.meta.get("image_size"),
            "objective": self.meta.get("objective"),
            "step": self.meta.get("step"),
            "epochs": self.meta.get("epochs"),
            "global_step": self.meta.get("global_step"),
        }


def check_external(value: str, expect: dict[str, Any], relative_to: Path | None = None) -> ExternalBackbone:
    """Find the export ``value`` names and check that it fits ``expect`` (the step's
    ``{"backbone": spec, "in_channels": n}``); a mismatch names both sides."""

    folder = export_dir(value, relative_to)
    try:
        meta = read_backbone_meta(folder)
    except CheckpointError as exc:
        raise UsageError(f"init_from {value}: {exc}") from None
    problems = []
    if meta.get("backbone") != expect["backbone"]:
        problems.append(f"architecture {meta.get('backbone')} (this step: {expect['backbone']})")
    if meta.get("in_channels") != expect["in_channels"]:
        problems.append(f"in_channels={meta.get('in_channels')} (this step: {expect['in_channels']})")
    if problems:
        raise UsageError(
            f"init_from {value}: the export does not fit this step: it has {' and '.join(problems)}; "
            "set the step's backbone and in_channels to match, or pre-train a matching backbone"
        )
    return ExternalBackbone(folder.resolve(), sha256_of(weights_file(folder, BACKBONE)), meta)
