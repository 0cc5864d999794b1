"""Components by kind and name: factory, argument model, and the plugin that gave it.

An argument model may declare a field that is itself a component of some kind (a
decoder inside an objective, member datasets inside a union) by marking it
:class:`Nested`. Recipe validation finds such fields with :func:`nested_specs` and
checks each spec against its own component, recursively; factories receive
``build=`` (:meth:`Registry.build`) to construct them.
"""

from __future__ import annotations

import builtins
import difflib
import fnmatch
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import pydantic
from pydantic_core import core_schema

from sslmed.core.errors import DuplicateComponentError, UnknownComponentError, UsageError

KINDS = ("augmentation", "backbone", "decoder", "objective", "dataset")


class NoArgs(pydantic.BaseModel):
    """Arguments of a component that takes none."""

    model_config = pydantic.ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Nested:
    """Marks an argument as a nested component of ``kind``: a spec ``{name: ..., <its arguments>}``.

    Use it in an argument model as ``Annotated[dict[str, Any], Nested("decoder")]``
    (also inside lists, dicts and sub-models). Recipe validation then checks the spec
    against that component's own argument model, with line numbers, and the factory
    builds it with the ``build`` callable it receives. ``exclude`` names components
    of ``kind`` that are not allowed there (a union cannot contain another union).
    """

    kind: str
    exclude: tuple[str, ...] = ()

    def __get_pydantic_core_schema__(self, source: Any, handler: pydantic.GetCoreSchemaHandler) -> Any:
        # keep the field's own schema and add the checks every spec needs
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: Any) -> Any:
        name = value.get("name") if isinstance(value, Mapping) else getattr(value, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"must be a {self.kind} spec with a name, e.g. {{name: <{self.kind}>, ...}}")
        if name in self.exclude:
            raise ValueError(f"a {self.kind} {name!r} is not allowed here")
        return value


NestedSpec = tuple[Nested, Any, tuple[str | int, ...]]


def nested_specs(model: type[pydantic.BaseModel], raw: Any, loc: tuple[str | int, ...] = ()) -> Iterator[NestedSpec]:
    """Every nested component spec in ``raw`` (plain data for ``model``), with its key path.

    Walks the model's fields, sub-models, lists and dicts; a spec found is yielded as
    ``(marker, spec, loc)`` and not entered (its arguments belong to its own model).
    """
    if not isinstance(raw, Mapping):
        return
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in raw:
            yield from _walk(info.annotation, info.metadata, raw[key], loc + (key,))


def _walk(annotation: Any, metadata: list[Any], value: Any, loc: tuple[str | int, ...]) -> Iterator[NestedSpec]:
    for marker in metadata:
        if isinstance(marker, Nested):
            yield marker, value, loc
            return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        yield from _walk(args[0], list(args[1:]), value, loc)
    elif isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        yield from nested_specs(annotation, value, loc)
    elif origin in (list, tuple, set, frozenset) and isinstance(value, list) and args:
        for index, item in enumerate(value):
            yield from _walk(args[0], [], item, loc + (index,))
    elif origin in (dict, Mapping) and isinstance(value, Mapping) and len(args) == 2:
        for key, item in value.items():
            yield from _walk(args[1], [], item, loc + (key,))
    elif origin in (typing.Union, types.UnionType):
        for option in args:  # the first alternative that holds specs (Optional[...] has one)
            found = list(_walk(option, [], value, loc))
            if found:
                yield from found
                return


def _accepts(factory: Callable[..., Any], keyword: str) -> bool:
    """Whether ``factory`` takes the keyword argument ``keyword`` (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


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

    def find(self, name: str) -> builtins.list[Component]:
        """Every component called ``name``, whatever its kind."""
        return [c[name] for c in self._components.values() if name in c]

    def build(self, kind: str, spec: Mapping[str, Any], **context: Any) -> Any:
        """Build a component from a recipe spec ``{"name": ..., <args>}``.

        ``context`` is what the kind's factory receives besides its arguments (see
        :mod:`sslmed.core.hookspecs`); every factory that accepts it also gets ``build``,
        this method, to construct the nested components its arguments declare.
        """
        values = dict(spec)
        name = values.pop("name", None)
        if not isinstance(name, str):
            raise UsageError(f"a {kind} spec needs a name, e.g. {{name: ...}}; got {dict(spec)!r}")
        component = self.get(kind, name)
        try:
            parsed = component.parse_args(values)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"{kind} {name!r}: {problems}") from None
        if _accepts(component.factory, "build"):
            context.setdefault("build", self.build)
        return component.factory(parsed, **context)
