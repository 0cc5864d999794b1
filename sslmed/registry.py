"""Stable import path for plugins: re-exports :mod:`sslmed.core.registry` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.core.registry` itself; this module exists so that
third-party plugins written against ``sslmed.registry`` keep working.
"""

from sslmed.core.registry import (
    KINDS,
    Component,
    Nested,
    NestedSpec,
    NoArgs,
    Registry,
    close_matches,
    nested_specs,
)

__all__ = [
    "KINDS",
    "NoArgs",
    "Nested",
    "NestedSpec",
    "nested_specs",
    "Component",
    "close_matches",
    "Registry",
]
