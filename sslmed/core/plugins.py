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
from typing import Any

import pluggy

from sslmed import __version__
from sslmed.core import hookspecs
from sslmed.core.errors import PluginError, SslmedError
from sslmed.core.registry import KINDS, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sslmed"
DISABLE_ENV = "SSLMED_DISABLE_PLUGINS"

DEFAULT_PLUGINS = (
    "sslmed.default_plugins.commands",
    "sslmed.default_plugins.augmentations",
    "sslmed.default_plugins.backbones",
    "sslmed.default_plugins.timm_backbones",
    "sslmed.default_plugins.datasets",
    "sslmed.default_plugins.chexpert",
    "sslmed.default_plugins.data_commands",
    "sslmed.default_plugins.fetch_commands",
    "sslmed.default_plugins.simclr",
    "sslmed.default_plugins.byol",
    "sslmed.default_plugins.moco",
    "sslmed.default_plugins.simsiam",
    "sslmed.default_plugins.dino",
    "sslmed.default_plugins.vicreg",
    "sslmed.default_plugins.barlow_twins",
    "sslmed.default_plugins.multicrop",
    "sslmed.default_plugins.erasing",
    "sslmed.default_plugins.decoders",
    "sslmed.default_plugins.crsm",
    "sslmed.default_plugins.union",
    "sslmed.default_plugins.report_command",
    "sslmed.default_plugins.serve_command",
    "sslmed.default_plugins.archive_commands",
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


def disable_hint(name: str) -> str:
    """How to run without the plugin ``name``."""
    return f"uninstall it or set {DISABLE_ENV}={name} to skip it"


def _record_failure(name: str, error: str) -> None:
    """Remember a third-party plugin's failure (``sslmed plugins`` shows it) and warn once."""
    if error in _failed.get(name, ""):
        return
    _failed[name] = f"{_failed[name]}; {error}" if name in _failed else error
    log.warning("plugin %r failed and was skipped: %s (%s)", name, error, disable_hint(name))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (the plugin tried to end the program)"
    return f"{type(exc).__name__}: {exc}"


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of the ``sslmed`` group (tests replace this)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    blocked = disabled_plugins()
    for ep in _entry_points():
        if ep.name in blocked or ep.name in _failed:
            continue
        if pm.get_plugin(ep.name) is not None or ep.name in DEFAULT_PLUGINS:
            _record_failure(ep.name, f"a second plugin of this name ({ep.value}) was not loaded")
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin (even sys.exit()) must not take sslmed down
            _record_failure(ep.name, f"failed to load: {_describe(exc)}")
            continue
        if ep.dist is not None:
            _versions[ep.name] = ep.dist.version


def _drop_invalid_plugins(pm: pluggy.PluginManager) -> None:
    """Unregister third-party plugins whose hooks do not exist (misspelt names)."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin)
            if name is None or name in DEFAULT_PLUGINS:
                raise PluginError(f"a plugin implements a hook that does not exist: {exc}") from None
            pm.unregister(exc.plugin)
            _record_failure(name, f"implements a hook that does not exist: {exc}")


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
            _drop_invalid_plugins(pm)
            _pm = pm
        return _pm


class _PluginFailed(Exception):
    """A third-party plugin failed while registering its components."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(message)
        self.plugin = plugin


def _fill(registry: Registry, pm: pluggy.PluginManager) -> None:
    for kind in KINDS:
        caller = getattr(pm.hook, REGISTRATION_HOOKS[kind])
        for impl in caller.get_hookimpls():
            owner = impl.plugin_name

            def register(name: str, *args: Any, _kind: str = kind, _owner: str = owner, **kwargs: Any) -> Any:
                taken = registry.find(name) if isinstance(name, str) else []
                clash = next((c for c in taken if c.kind == _kind), None)
                if clash is not None and (_owner not in DEFAULT_PLUGINS or clash.plugin not in DEFAULT_PLUGINS):
                    culprit = _owner if _owner not in DEFAULT_PLUGINS else clash.plugin
                    other = clash.plugin if culprit == _owner else _owner
                    raise _PluginFailed(culprit, f"registers {_kind} {name!r}, which plugin {other!r} also registers")
                return registry.register(_kind, name, *args, plugin=_owner, **kwargs)

            try:
                impl.function(register=register)
            except _PluginFailed:
                raise
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                if owner in DEFAULT_PLUGINS:
                    if isinstance(exc, SslmedError):
                        raise
                    raise PluginError(
                        f"plugin {owner!r} failed in {REGISTRATION_HOOKS[kind]}: {type(exc).__name__}: {exc}"
                    ) from exc
                raise _PluginFailed(owner, f"failed in {REGISTRATION_HOOKS[kind]}: {_describe(exc)}") from None


def _build_registry(pm: pluggy.PluginManager) -> Registry:
    """Fill a registry; a third-party plugin that fails is recorded, unregistered, and the
    registry built again without it (so none of its components stay half-registered)."""
    while True:
        registry = Registry()
        try:
            _fill(registry, pm)
            return registry
        except _PluginFailed as failure:
            plugin = pm.get_plugin(failure.plugin)
            if plugin is None:  # pragma: no cover - cannot happen: it just ran
                raise PluginError(f"plugin {failure.plugin!r} {failure}") from None
            pm.unregister(plugin)
            _record_failure(failure.plugin, str(failure))


def get_registry() -> Registry:
    """The registry of every component of every loaded plugin."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = _build_registry(get_plugin_manager())
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
    get_registry()  # registering components is where some plugins fail
    infos = []
    for name, plugin in pm.list_name_plugin():
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))
        builtin = name in DEFAULT_PLUGINS
        version = _versions.get(name)
        if builtin:
            version = __version__
        infos.append(PluginInfo(name=name, version=version, builtin=builtin, hooks=hooks, error=_failed.get(name)))
    loaded = {info.name for info in infos}
    for name, error in _failed.items():
        if name not in loaded:
            infos.append(PluginInfo(name=name, version=_versions.get(name), builtin=False, hooks=(), error=error))
    return infos


def extend_cli(cli: Any) -> None:
    """Let plugins add commands to the command line; a plugin that fails here is named
    and skipped, so every other command keeps working."""
    try:
        pm = get_plugin_manager()
    except SslmedError as exc:
        print(f"sslmed: {exc}", file=sys.stderr)
        return
    # pluggy's own call order (tryfirst, then the newest registration first, then trylast):
    # get_hookimpls() lists them the other way round
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(cli=cli)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            if impl.plugin_name in DEFAULT_PLUGINS and not isinstance(exc, SslmedError):
                raise
            _record_failure(impl.plugin_name, f"failed in register_commands: {_describe(exc)}")
