"""Components by kind and name: factory, argument model, and the plugin that gave it."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from sslmed.errors import DuplicateComponentError, UnknownComponentError, UsageError

KINDS = ("augmentation", "backbone", "decoder", "objective", "dataset")


class NoArgs(pydantic.BaseModel):
    """Arguments of a component that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    args: type[pydantic.BaseModel]
    plugin: str
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def parse_args(self, values: dict[str, Any]) -> pydantic.BaseModel:
        """Validate ``values`` against the argument model (raises pydantic errors)."""
        return self.args.model_validate(values)


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def close_matches(word: str, choices: list[str]) -> list[str]:
    """Names from ``choices`` that look like ``word`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(word, choices, n=3, cutoff=0.6)


class Registry:
    """All components, filled by the plugins' registration hooks."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}

    def register(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any],
        *,
        plugin: str,
        args: type[pydantic.BaseModel] | None = None,
        description: str | None = None,
        **metadata: Any,
    ) -> Component:
        """Add a component; a name already taken within ``kind`` is an error."""
        if kind not in self._components:
            raise UsageError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise UsageError(f"plugin {plugin!r} registered a {kind} with an empty or non-text name")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"and by plugin {plugin!r}; uninstall or block one of them "
                f"(SSLMED_DISABLE_PLUGINS={plugin})"
            )
        if args is not None and not (isinstance(args, type) and issubclass(args, pydantic.BaseModel)):
            raise UsageError(f"{kind} {name!r} from plugin {plugin!r}: args must be a pydantic model class")
        component = Component(
            kind=kind,
            name=name,
            factory=factory,
            args=args or NoArgs,
            plugin=plugin,
            description=description if description is not None else _first_doc_line(factory),
            metadata=dict(metadata),
        )
        self._components[kind][name] = component
        return component

    def names(self, kind: str) -> list[str]:
        """Sorted names of the components of one kind."""
        return sorted(self._components[kind])

    def list(self, kind: str | None = None, pattern: str = "*") -> list[Component]:
        """Components, optionally of one kind and matching a shell-style ``pattern``."""
        kinds = [kind] if kind else list(KINDS)
        found = []
        for k in kinds:
            for name in sorted(self._components[k]):
                if fnmatch.fnmatch(name, pattern):
                    found.append(self._components[k][name])
        return found

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``, or an error listing close matches."""
        try:
            return self._components[kind][name]
        except KeyError:
            raise UnknownComponentError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        names = self.names(kind)
        hint = close_matches(str(name), names)
        text = f"unknown {kind} {name!r}"
        if hint:
            text += f"; did you mean {' or '.join(repr(h) for h in hint)}?"
        return text + f" (available: {', '.join(names) or 'none'})"

    def find(self, name: str) -> list[Component]:
        """Every component called ``name``, whatever its kind."""
        return [c[name] for c in self._components.values() if name in c]

    def build(self, kind: str, spec: dict[str, Any], **context: Any) -> Any:
        """Build a component from a recipe spec ``{"name": ..., <args>}``."""
        values = dict(spec)
        name = values.pop("name")
        component = self.get(kind, name)
        try:
            parsed = component.parse_args(values)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"{kind} {name!r}: {problems}") from None
        return component.factory(parsed, **context)
