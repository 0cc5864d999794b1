"""Stable import path for plugins: re-exports :mod:`sslmed.core.errors` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.core.errors` itself; this module exists so that
third-party plugins written against ``sslmed.errors`` keep working.
"""

from sslmed.core.errors import (
    MAX_SHOWN_PROBLEMS,
    CheckpointError,
    DataError,
    DuplicateComponentError,
    ImageLoadError,
    PluginError,
    RecipeError,
    RunInterrupted,
    SslmedError,
    UnknownComponentError,
    UsageError,
)

__all__ = [
    "MAX_SHOWN_PROBLEMS",
    "SslmedError",
    "UsageError",
    "RecipeError",
    "UnknownComponentError",
    "DuplicateComponentError",
    "PluginError",
    "DataError",
    "ImageLoadError",
    "CheckpointError",
    "RunInterrupted",
]
