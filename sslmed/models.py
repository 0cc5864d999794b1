"""Stable import path for plugins: re-exports :mod:`sslmed.core.backbone` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.core.backbone` itself; this module exists so that
third-party plugins written against ``sslmed.models`` keep working.
"""

from sslmed.core.backbone import (
    Backbone,
)

__all__ = [
    "Backbone",
]
