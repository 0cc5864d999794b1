"""Stable import path for plugins: re-exports :mod:`sslmed.training.methods` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.training.methods` itself; this module exists so that
third-party plugins written against ``sslmed.methods`` keep working.
"""

from sslmed.core.backbone import Backbone
from sslmed.core.recipe import OptimizerSettings, ScheduleSettings
from sslmed.training.methods import SSLMethod

__all__ = [
    "Backbone",
    "SSLMethod",
    "OptimizerSettings",
    "ScheduleSettings",
]
