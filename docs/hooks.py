"""MkDocs hooks: the reference pages that are generated from the code at build time.

A page asks for generated content with an HTML comment on a line of its own:

``<!-- sslmed:cli -->``
    the help of every ``sslmed`` command, plugin commands included (click).
``<!-- sslmed:recipe-schema -->``
    every recipe key: type, default, constraints, description (pydantic JSON schema).
``<!-- sslmed:components -->``
    every registered component, by kind, with its argument model (pydantic).
``<!-- sslmed:hook-list -->``
    a table of the hooks with their exact signatures (``sslmed/hookspecs.py``).
``<!-- sslmed:hookspec NAME -->``
    the specification of hook NAME, as written in ``sslmed/hookspecs.py``.
``<!-- sslmed:include PATH -->``
    a file of the repository (e.g. a shipped recipe) as a code block titled PATH.
``<!-- sslmed:datasets -->``
    the dataset catalogue (``sslmed/catalog.py``) as a table: name, images, licence,
    source, size, and how the files are obtained.

The build fails (``mkdocs build --strict`` or not) when a marker names something
that does not exist, or when a hook of ``sslmed/hookspecs.py`` has no
``sslmed:hookspec`` section anywhere in the docs. The recipe's JSON schema is also
published as ``reference/recipe.schema.json``.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- sslmed:(?P<what>[\w-]+)(?: (?P<arg>\S+))? -->[ \t]*$", re.M)
SCHEMA_FILE = "reference/recipe.schema.json"
FENCES = {".yaml": "yaml", ".yml": "yaml", ".py": "python", ".toml": "toml", ".md": "markdown", ".cfg": "ini"}

_documented_hooks: set[str] = set()


# ----------------------------------------------------------------------- the code


def command_line() -> click.Group:
    """The ``sslmed`` click group with every plugin's commands added."""
    from sslmed.cli import cli
    from sslmed.plugins import extend_cli

    extend_cli(cli)
    return cli


def hook_specs() -> list[tuple[str, Any]]:
    """``(name, function)`` of every hook specification, in source order."""
    from sslmed import hookspecs

    specs = [
        (name, fn) for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "sslmed_spec")
    ]
    return sorted(specs, key=lambda item: item[1].__code__.co_firstlineno)


def hook_signature(function: Any, annotations: bool = True) -> str:
    """``register_augmentations(register: Register) -> None``, as written in the source."""
    signature = inspect.signature(function)
    params = []
    for param in signature.parameters.values():
        text = param.name
        if annotations and param.annotation is not inspect.Parameter.empty:
            text += f": {param.annotation}"
        params.append(text)
    text = f"{function.__name__}({', '.join(params)})"
    if annotations and signature.return_annotation is not inspect.Signature.empty:
        text += f" -> {signature.return_annotation}"
    return text


# -------------------------------------------------------------------- rendering


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    yield command, ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(
                sub, click.Context(sub, info_name=name, parent=ctx, terminal_width=88, max_content_width=88)
            )


def render_cli() -> str:
    group = command_line()
    root = click.Context(group, info_name="sslmed", terminal_width=88, max_content_width=88)
    out = []
    commands = list(_walk(group, root))
    out.append("| command | what it does |\n|---|---|")
    for command, ctx in commands[1:]:
        title = ctx.command_path
        out.append(f"| [`{title}`](#{title.replace(' ', '-')}) | {_cell(command.get_short_help_str(limit=120))} |")
    out.append("")
    for command, ctx in commands:
        level = "#" * (2 + max(0, ctx.command_path.count(" ") - 1))
        out.append(f"{level} {ctx.command_path}\n")
        out.append("```text\n" + command.get_help(ctx).rstrip() + "\n```\n")
    return "\n".join(out)


def _constraints(prop: dict[str, Any]) -> list[str]:
    found = []
    for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            found.append(f"{symbol} {prop[key]}")
    if "minItems" in prop:
        found.append(f"at least {prop['minItems']} item(s)")
    if "pattern" in prop:
        found.append(f"matches `{prop['pattern']}`")
    for option in prop.get("anyOf", []):
        found += _constraints(option)
    return found


def _type(prop: dict[str, Any], anchors: dict[str, str]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{anchors[name]})" if name in anchors else name
    if "anyOf" in prop:
        return " or ".join(_type(option, anchors) for option in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}), anchors)}"
    if kind == "object":
        values = prop.get("additionalProperties")
        return f"mapping of string to {_type(values, anchors)}" if isinstance(values, dict) else "mapping"
    return {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean", "null": "null"}.get(
        kind, kind
    )


def _fields_table(schema: dict[str, Any], anchors: dict[str, str]) -> str:
    properties = schema.get("properties", {})
    if not properties:
        return "No arguments.\n"
    required = set(schema.get("required", []))
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, prop in properties.items():
        default = "*required*" if key in required else f"`{json.dumps(prop.get('default'))}`"
        notes = [prop.get("description", "")] + _constraints(prop)
        rows.append(
            f"| `{key}` | {_cell(_type(prop, anchors))} | {_cell(default)} | "
            f"{_cell('; '.join(n for n in notes if n))} |"
        )
    return "\n".join(rows) + "\n"


def render_recipe_schema() -> str:
    from sslmed.core.recipe import recipe_schema

    schema = recipe_schema()
    order = [
        "StepSettings",
        "ComponentSpec",
        "OptimizerSettings",
        "ScheduleSettings",
        "EvaluationSettings",
        "SupervisedSettings",
    ]
    found = schema.get("$defs", {})
    definitions = {name: found[name] for name in order if name in found}
    definitions.update({name: value for name, value in found.items() if name not in definitions})
    anchors = {name: f"recipe-{name.lower()}" for name in definitions}
    anchors["Recipe"] = "recipe-recipe"
    out = ["### Recipe {#recipe-recipe}\n", schema.get("description", ""), "", _fields_table(schema, anchors)]
    for name, definition in definitions.items():
        out += [
            f"### {name} {{#{anchors[name]}}}\n",
            definition.get("description", ""),
            "",
            _fields_table(definition, anchors),
        ]
        if definition.get("additionalProperties") is True:
            out.append("Other keys are the component's own arguments; see [Components](components.md).\n")
    return "\n".join(out)


def render_components() -> str:
    from sslmed.plugins import get_registry
    from sslmed.registry import KINDS

    registry = get_registry()
    out = []
    for kind in KINDS:
        components = registry.list(kind)
        out.append(f"## {kind.capitalize()}s {{#{kind}s}}\n")
        if not components:
            out.append(f"No {kind} is registered.\n")
            continue
        out.append("| name | plugin | what it is |\n|---|---|---|")
        for c in components:
            out.append(f"| [`{c.name}`](#{kind}-{c.name}) | `{c.plugin}` | {_cell(c.description)} |")
        out.append("")
        for c in components:
            out.append(f"### {c.name} {{#{kind}-{c.name}}}\n")
            meta = ", ".join(f"{k} `{v}`" for k, v in c.metadata.items())
            out.append(f"*{kind}* from plugin `{c.plugin}`" + (f"; {meta}" if meta else "") + "\n")
            if c.description:
                out.append(c.description + "\n")
            schema = c.args.model_json_schema()
            doc = schema.get("description", "")
            if doc and doc != c.description:
                out.append(doc + "\n")
            anchors = {name: f"{kind}-{c.name}-{name.lower()}" for name in schema.get("$defs", {})}
            out.append(_fields_table(schema, anchors))
            for name, definition in schema.get("$defs", {}).items():
                out += [f"#### {name} {{#{anchors[name]}}}\n", _fields_table(definition, anchors)]
    return "\n".join(out)


def render_hook_list() -> str:
    rows = ["| hook, with its exact signature | what it is for |", "|---|---|"]
    for name, fn in hook_specs():
        summary = (inspect.getdoc(fn) or "").splitlines()[0]
        rows.append(f"| [`{hook_signature(fn)}`](#{name}) | {_cell(summary)} |")
    return "\n".join(rows) + "\n"


def render_hookspec(name: str) -> str:
    specs = dict(hook_specs())
    if name not in specs:
        raise PluginError(
            f"docs: sslmed:hookspec {name}: no such hook in sslmed/hookspecs.py (hooks: {', '.join(specs)})"
        )
    _documented_hooks.add(name)
    source = inspect.getsource(specs[name]).rstrip()
    return f'```python title="sslmed/hookspecs.py"\n{source}\n```\n'


def render_datasets() -> str:
    from sslmed.data.catalog import CATALOG

    rows = ["| name | images | licence | source | size | files |", "|---|---|---|---|---|---|"]
    for e in CATALOG.values():
        files = []
        for d in e.downloads:
            how = "by hand (account)" if d.manual else ("md5 pinned" if d.pinned else "checksum unpinned")
            files.append(f"[{_cell(d.filename)}]({d.url}) ({how})")
        rows.append(
            f"| `{e.name}` | {e.images:,} | {_cell(e.licence)} | [{_cell(e.title)}]({e.source}); "
            f"{_cell(e.citation)} | {e.size_mb:g} MB | {'<br>'.join(files)} |"
        )
    notes = [f"- `{e.name}`: {_cell(e.note)}" for e in CATALOG.values() if e.note]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def render_include(path: str) -> str:
    file = (ROOT / path).resolve()
    if ROOT not in file.parents or not file.is_file():
        raise PluginError(f"docs: sslmed:include {path}: no such file in the repository")
    fence = FENCES.get(file.suffix, "text")
    return f'```{fence} title="{path}"\n{file.read_text(encoding="utf-8").rstrip()}\n```\n'


# ------------------------------------------------------------------ mkdocs hooks


def on_pre_build(config: Any) -> None:
    _documented_hooks.clear()


def on_files(files: Any, config: Any) -> Any:
    from sslmed.core.recipe import recipe_schema

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sslmed recipe", **recipe_schema()}
    files.append(File.generated(config, SCHEMA_FILE, content=json.dumps(schema, indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        what, arg = match["what"], match["arg"]
        simple = {
            "cli": render_cli,
            "recipe-schema": render_recipe_schema,
            "components": render_components,
            "hook-list": render_hook_list,
            "datasets": render_datasets,
        }
        if what in simple and arg is None:
            return simple[what]()
        if what == "hookspec" and arg:
            return render_hookspec(arg)
        if what == "include" and arg:
            return render_include(arg)
        raise PluginError(f"docs: {page.file.src_path}: unknown marker {match[0]!r}")

    return MARKER.sub(replace, markdown)


def on_post_build(config: Any) -> None:
    missing = [name for name, _fn in hook_specs() if name not in _documented_hooks]
    if missing:
        raise PluginError(
            f"docs: hook(s) {', '.join(missing)} of sslmed/hookspecs.py have no <!-- sslmed:hookspec NAME --> section"
        )
