"""sslmed: plugin-based self-supervised learning for medical image classification.

``import sslmed`` is cheap (no torch): :func:`load_model` and :class:`Model` load
:mod:`sslmed.api` the first time they are used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Model", "load_model", "__version__"]

_LAZY = {"load_model": "sslmed.serving.api", "Model": "sslmed.serving.api"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslmed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
