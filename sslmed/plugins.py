"""The plugin manager: built-in plugins, third-party entry points, blocking, listing.

Built-in components are plugins like any other: the modules in ``DEFAULT_PLUGINS``
implement the same hooks that third-party packages implement through the ``sslmed``
entry-point group. ``SSLMED_DISABLE_PLUGINS`` (comma-separated entry-point names)
blocks external plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import sys
import threading
from dataclasses import dataclass
from functools import partial
from typing import Any

import pluggy

from sslmed import hookspecs
from sslmed.errors import PluginError, SslmedError
from sslmed.registry import KINDS, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sslmed"
DISABLE_ENV = "SSLMED_DISABLE_PLUGINS"

DEFAULT_PLUGINS = (
    "sslmed.default_plugins.commands",
    "sslmed.default_plugins.augmentations",
    "sslmed.default_plugins.backbones",
    "sslmed.default_plugins.datasets",
    "sslmed.default_plugins.chexpert",
    "sslmed.default_plugins.data_commands",
    "sslmed.default_plugins.fetch_commands",
    "sslmed.default_plugins.simclr",
    "sslmed.default_plugins.erasing",
    "sslmed.default_plugins.decoders",
    "sslmed.default_plugins.crsm",
    "sslmed.default_plugins.union",
    "sslmed.default_plugins.report_command",
    "sslmed.default_plugins.serve_command",
)

# hook name for each component kind
REGISTRATION_HOOKS = {
    "augmentation": "register_augmentations",
    "backbone": "register_backbones",
    "decoder": "register_decoders",
    "objective": "register_objectives",
    "dataset": "register_datasets",
}


@dataclass(frozen=True)
class PluginInfo:
    """What ``sslmed plugins`` shows for one plugin."""

    name: str
    version: str | None
    builtin: bool
    hooks: tuple[str, ...]
    error: str | None = None


_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_failed: dict[str, str] = {}
_versions: dict[str, str] = {}


def disabled_plugins() -> set[str]:
    """Names listed in ``SSLMED_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    blocked = disabled_plugins()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in blocked or pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take sslmed down
            _failed[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %r failed to load and was skipped: %s", ep.name, _failed[ep.name])
            continue
        if ep.dist is not None:
            _versions[ep.name] = ep.dist.version


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded once."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("sslmed")
            pm.add_hookspecs(hookspecs)
            for module_name in DEFAULT_PLUGINS:
                pm.register(importlib.import_module(module_name), name=module_name)
            _load_entry_points(pm)
            try:
                pm.check_pending()
            except pluggy.PluginValidationError as exc:
                raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from None
            _pm = pm
        return _pm


def _fill(registry: Registry, pm: pluggy.PluginManager) -> None:
    for kind in KINDS:
        caller = getattr(pm.hook, REGISTRATION_HOOKS[kind])
        for impl in caller.get_hookimpls():
            register = partial(registry.register, kind, plugin=impl.plugin_name)
            try:
                impl.function(register=register)
            except SslmedError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {REGISTRATION_HOOKS[kind]}: {type(exc).__name__}: {exc}"
                ) from exc


def get_registry() -> Registry:
    """The registry of every component of every loaded plugin."""
    global _registry
    with _lock:
        if _registry is None:
            registry = Registry()
            _fill(registry, get_plugin_manager())
            _registry = registry
        return _registry


def register_plugin(plugin: Any, name: str) -> None:
    """Register a plugin object at run time (tests, notebooks); rebuilds the registry."""
    global _registry
    with _lock:
        get_plugin_manager().register(plugin, name=name)
        _registry = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    global _registry
    with _lock:
        pm = get_plugin_manager()
        plugin = pm.get_plugin(name)
        if plugin is not None:
            pm.unregister(plugin)
        _registry = None


def reload() -> None:
    """Forget everything loaded so the next call starts afresh (after installs)."""
    global _pm, _registry
    with _lock:
        _pm = None
        _registry = None
        _failed.clear()
        _versions.clear()


def plugin_infos() -> list[PluginInfo]:
    """Every plugin: built-in and external, loaded and failed."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        builtin = name in DEFAULT_PLUGINS
        version = _versions.get(name)
        if builtin:
            from sslmed import __version__

            version = __version__
        infos.append(PluginInfo(name=name, version=version, builtin=builtin, hooks=hooks))
    for name, error in _failed.items():
        infos.append(PluginInfo(name=name, version=None, builtin=False, hooks=(), error=error))
    return infos


def extend_cli(cli: Any) -> None:
    """Let plugins add commands to the command line."""
    try:
        get_plugin_manager().hook.register_commands(cli=cli)
    except SslmedError as exc:
        print(f"sslmed: {exc}", file=sys.stderr)
