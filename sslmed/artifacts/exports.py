"""Exported weights: safetensors tensors beside a JSON description, written atomically.

A *backbone export* (``backbone.safetensors`` + ``backbone.json``) is what one
pre-training step produces and what ``init_from`` reads. A *model export*
(``model.safetensors`` + ``model.json``) adds the linear classifier that evaluation
fitted; ``predict`` and the demo read it. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sslmed.artifacts.rundir import BACKBONE, MODEL_EXPORT, meta_file, weights_file
from sslmed.core.errors import CheckpointError
from sslmed.core.files import atomic_target, atomic_write_json

FORMAT_VERSION = 1


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors, atomically."""
    with atomic_target(path) as temp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temp))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a missing or corrupt file is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def save_backbone(directory: Path, backbone: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Export a backbone's weights and description (``meta``: spec, in_channels, ...)."""
    save_tensors(weights_file(directory, BACKBONE), backbone.state_dict())
    atomic_write_json(meta_file(directory, BACKBONE), {"format": FORMAT_VERSION, **meta})


def read_backbone_meta(directory: Path) -> dict[str, Any]:
    """The JSON description of a backbone export."""
    return _read_json(meta_file(directory, BACKBONE))


def load_backbone_weights(
    directory: Path, backbone: torch.nn.Module, expect: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Load an exported backbone into ``backbone``; every mismatch is a CheckpointError.

    ``expect`` (e.g. ``{"backbone": spec, "in_channels": 1}``) must equal the export's
    description for those keys, so weights of another model are refused with a reason.
    """
    meta = read_backbone_meta(directory)
    for key, value in (expect or {}).items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"{directory}: checkpoint is from another model: {key} is {meta.get(key)!r}, expected {value!r}"
            )
    state = load_tensors(weights_file(directory, BACKBONE))
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{directory}: weights do not fit this backbone (missing {len(result.missing_keys)} keys, "
            f"e.g. {result.missing_keys[:2]}; unexpected {len(result.unexpected_keys)}, "
            f"e.g. {result.unexpected_keys[:2]})"
        )
    return meta


def save_model(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Export a classifier (backbone + head tensors) with its description."""
    save_tensors(weights_file(directory, MODEL_EXPORT), tensors)
    atomic_write_json(meta_file(directory, MODEL_EXPORT), {"format": FORMAT_VERSION, **meta})


def load_model_files(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and description of a model export."""
    meta = _read_json(meta_file(directory, MODEL_EXPORT))
    if meta.get("format") != FORMAT_VERSION or "backbone" not in meta or "classes" not in meta:
        raise CheckpointError(f"{meta_file(directory, MODEL_EXPORT)}: not an sslmed model description")
    return load_tensors(weights_file(directory, MODEL_EXPORT)), meta
