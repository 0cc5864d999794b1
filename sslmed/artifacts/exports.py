"""Exported weights: safetensors tensors beside a JSON description, written atomically.

A *backbone export* (``backbone.safetensors`` + ``backbone.json``) is what one
pre-training step produces and what ``init_from`` reads. A *model export*
(``model.safetensors`` + ``model.json``) adds the linear classifier that evaluation
fitted; ``predict`` and the demo read it. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import pydantic
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sslmed.artifacts.rundir import BACKBONE, MODEL_EXPORT, meta_file, weights_file
from sslmed.core.errors import CheckpointError
from sslmed.core.files import atomic_target, atomic_write_json, read_bounded

FORMAT_VERSION = 1

#: a model or backbone description larger than this is refused before it is read (real
#: ones are a few kB; a 100-class confusion matrix is about 50 kB)
MAX_META_BYTES = 4 << 20


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors, atomically."""
    with atomic_target(path) as temp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temp))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    data = read_bounded(path, MAX_META_BYTES, "model description", CheckpointError)
    try:
        value = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a model description") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, not {type(value).__name__}")
    return value


def _strict_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    return value


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Spec(_Open):
    name: str = Field(min_length=1, max_length=200)


class _Extra(_Open):
    kind: str
    spec: _Spec


class _Calibration(_Open):
    temperature: Any = Field(description="logits are divided by it: a finite number in [0.01, 100]")

    @pydantic.field_validator("temperature")
    @classmethod
    def _range(cls, value: Any) -> Any:
        _strict_number(value)
        if not 0.01 <= value <= 100:
            raise ValueError(f"must be a number in [0.01, 100] (logits are divided by it), got {value}")
        return value


class _Ood(_Open):
    threshold: Any
    quantile: Any = 0.99

    @pydantic.field_validator("threshold", "quantile")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return _strict_number(value)


class ModelMeta(_Open):
    """What ``model.json`` must hold for predict and the page to use it (other keys, such
    as ``metrics`` or ``recipe``, are kept as they are)."""

    format: Literal[1]
    backbone: _Spec
    classes: list[str] = Field(min_length=1, max_length=10_000)
    image_size: int = Field(ge=8, le=1024)
    in_channels: Literal[1, 3]
    task: str | None = None
    activation: str | None = None
    extras: dict[str, _Extra] = Field(default_factory=dict)
    calibration: _Calibration | None = None
    ood: _Ood | None = None

    @pydantic.field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be distinct")
        return value


def _describe(error: pydantic.ValidationError, limit: int = 3) -> str:
    parts = []
    for item in error.errors()[:limit]:
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        value = item.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        parts.append(f"{where}: {item['msg']} (got {shown[:60]})")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validate_model_meta(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` once :class:`ModelMeta` accepts it; else a one-line CheckpointError naming
    ``path``, the key, the value and what would be valid."""
    try:
        ModelMeta.model_validate(meta)
    except pydantic.ValidationError as error:
        raise CheckpointError(f"{path}: not a usable sslmed model description: {_describe(error)}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a model description") from None
    return meta


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
    path = meta_file(directory, MODEL_EXPORT)
    meta = _read_json(path)
    if meta.get("format") != FORMAT_VERSION or "backbone" not in meta or "classes" not in meta:
        raise CheckpointError(f"{path}: not an sslmed model description")
    validate_model_meta(path, meta)
    return load_tensors(weights_file(directory, MODEL_EXPORT)), meta
