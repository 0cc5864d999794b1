"""Stable import path for plugins: re-exports :mod:`sslmed.core.hookspecs` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.core.hookspecs` itself; this module exists so that
third-party plugins written against ``sslmed.hookspecs`` keep working.
"""

from sslmed.core.hookspecs import (
    Register,
    hookimpl,
    hookspec,
    register_augmentations,
    register_backbones,
    register_commands,
    register_datasets,
    register_decoders,
    register_objectives,
)

__all__ = [
    "hookspec",
    "hookimpl",
    "Register",
    "register_augmentations",
    "register_backbones",
    "register_decoders",
    "register_objectives",
    "register_datasets",
    "register_commands",
]
