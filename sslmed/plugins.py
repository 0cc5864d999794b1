"""Stable import path for plugins: re-exports :mod:`sslmed.core.plugins` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.core.plugins` itself; this module exists so that
third-party plugins written against ``sslmed.plugins`` keep working.
"""

from sslmed.core.plugins import (
    DEFAULT_PLUGINS,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    REGISTRATION_HOOKS,
    PluginInfo,
    disable_hint,
    disabled_plugins,
    extend_cli,
    get_plugin_manager,
    get_registry,
    plugin_infos,
    register_plugin,
    reload,
    unregister_plugin,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
    "DEFAULT_PLUGINS",
    "REGISTRATION_HOOKS",
    "PluginInfo",
    "disabled_plugins",
    "disable_hint",
    "get_plugin_manager",
    "get_registry",
    "register_plugin",
    "unregister_plugin",
    "reload",
    "plugin_infos",
    "extend_cli",
]
