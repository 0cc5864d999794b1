"""The core commands: ``run``, ``validate``, ``plugins``, ``list``, ``info``, ``eval``, ``predict``.

Registered through ``register_commands`` like every other command (see ``sslmed.app.cli``).
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any

import click

from sslmed.core.errors import ImageLoadError, UnknownComponentError, UsageError
from sslmed.core.hookspecs import hookimpl
from sslmed.core.plugins import disable_hint, get_registry, plugin_infos
from sslmed.core.registry import KINDS, Nested, close_matches
from sslmed.default_plugins.archive_commands import archive_options, run_archive

KIND_CHOICES = KINDS


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. steps.0.epochs=2 (repeatable).",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="latest",
    default=None,
    metavar="[RUN_DIR]",
    help="Continue an interrupted run: the latest of this recipe, or RUN_DIR.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Where run folders go.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Use this run folder (new, or continue the run in it); give every machine of a multi-node job the same one.",
)
def run(recipe: Path, overrides: tuple[str, ...], resume: str | None, runs_dir: Path, run_dir: Path | None) -> None:
    """Run RECIPE: every pre-training step, then the evaluation; print the results table.

    RECIPE may also be a run folder: the run continues with the recipe it keeps
    (its recipe.yaml, with the --set overrides it was started with)."""
    # lazily: Lightning and scikit-learn load only for the command that runs
    from sslmed.app.runner import run_recipe

    if recipe.is_dir():
        if not (recipe / "recipe.yaml").is_file():
            raise UsageError(f"{recipe}: a folder, not a recipe file or a run folder (no recipe.yaml in it)")
        if overrides:
            raise UsageError(f"{recipe}: a run folder continues with its own recipe; --set is not allowed with it")
        recipe, resume = recipe / "recipe.yaml", resume or str(recipe)

    if resume and run_dir:
        raise UsageError(
            "give either --resume or --run-dir, not both (--run-dir continues a run already in that folder)"
        )
    result = run_recipe(recipe, overrides, runs_dir=runs_dir, resume=resume, run_dir=run_dir)
    if result is None:  # a DDP worker process: rank 0 reports
        return
    if logging.getLogger("sslmed.app.runner").getEffectiveLevel() > logging.INFO:
        click.echo(f"run folder: {result.run_dir}", err=True)  # -q: the log line saying so was not shown
    if result.table:
        click.echo(result.table)


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable).")
@click.option("--no-data", is_flag=True, help="Check the recipe only, not that its data exists.")
def validate(recipe: Path, overrides: tuple[str, ...], no_data: bool) -> None:
    """Check RECIPE completely (keys, components, arguments, references, data); run nothing."""
    # lazily: torch loads only for the command that runs
    from sslmed.app.prepare import build_sources, load_recipe_file

    loaded, registry = load_recipe_file(recipe, overrides)
    if not no_data:
        sources = build_sources(loaded, registry)
        for alias, source in sources.items():
            counts = ", ".join(f"{split} {len(records)}" for split, records in source.splits.items())
            unlabelled = sum(not r.is_labelled for r in source.records("all")) if source.classes else 0
            extra = f"; {unlabelled} unlabelled (pre-training only)" if unlabelled else ""
            click.echo(f"data {alias}: {len(source.classes)} classes; {counts}{extra}", err=True)
    click.echo(f"{recipe}: OK ({len(loaded.steps)} step(s): {', '.join(s.name for s in loaded.steps)})")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins: name, version, hooks and the components each gave."""

    registry = get_registry()
    infos: list[dict[str, Any]] = []
    for info in plugin_infos():
        components = [f"{c.kind}:{c.name}" for c in registry.list() if c.plugin == info.name]
        infos.append(
            {
                "name": info.name,
                "version": info.version,
                "builtin": info.builtin,
                "hooks": list(info.hooks),
                "components": components,
                "error": info.error,
            }
        )
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for entry in infos:
        origin = "built-in" if entry["builtin"] else "external"
        if entry["error"]:
            click.echo(f"{entry['name']} (external, FAILED, skipped): {entry['error']}")
            click.echo(f"  {disable_hint(entry['name'])}")
            continue
        click.echo(f"{entry['name']} {entry['version'] or ''} ({origin})")
        click.echo(f"  hooks: {', '.join(entry['hooks'])}")
        if entry["components"]:
            click.echo(f"  components: {', '.join(entry['components'])}")


@click.command(name="list")
@click.argument("kind", required=False, type=click.Choice(KIND_CHOICES))
@click.option("--pattern", default="*", help="Shell-style filter on names, e.g. 'resnet*'.")
def list_components(kind: str | None, pattern: str) -> None:
    """List components, optionally of one KIND."""

    for component in get_registry().list(kind, pattern):
        stage = component.metadata.get("stage")
        extra = f" [{stage}]" if stage else ""
        click.echo(f"{component.kind:<12} {component.name:<16} {component.description}{extra}  ({component.plugin})")


def _type_name(annotation: Any) -> str:
    """``int``, ``list[str]``, ``Literal['zero', 'mean']``: readable argument types."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def describe_component(component: Any) -> str:
    """Arguments, defaults and help of one component, as text."""
    lines = [f"{component.kind} {component.name}  (plugin {component.plugin})", ""]
    doc = inspect.cleandoc(component.args.__doc__ or "")
    if component.description:
        lines.append(component.description)
    if doc and doc != component.description:
        lines.append(doc)
    if component.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in component.metadata.items()))
    lines += ["", "arguments:"]
    if not component.args.model_fields:
        lines.append("  (none)")
    for name, field in component.args.model_fields.items():
        default = "required" if field.is_required() else f"default {field.default!r}"
        nested = [m for m in field.metadata if isinstance(m, Nested)]
        kind = f"a {nested[0].kind} spec" if nested else _type_name(field.annotation)
        lines.append(f"  {name} ({kind}, {default})" + (f": {field.description}" if field.description else ""))
    return "\n".join(lines)


@click.command()
@click.argument("component")
@click.option("--kind", type=click.Choice(KIND_CHOICES), help="Which kind, when several share the name.")
def info(component: str, kind: str | None) -> None:
    """Show a COMPONENT's arguments, defaults and documentation."""

    registry = get_registry()
    found = [registry.get(kind, component)] if kind else registry.find(component)
    if not found:
        names = sorted({c.name for c in registry.list()})
        hint = close_matches(component, names)
        raise UnknownComponentError(
            f"no component named {component!r}" + (f"; did you mean {' or '.join(map(repr, hint))}?" if hint else "")
        )
    click.echo("\n\n".join(describe_component(c) for c in found))


@click.command(name="eval")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def eval_command(run_dir: Path) -> None:
    """Re-run the evaluation of a finished run in RUN_DIR and print the table."""
    # lazily: Lightning and scikit-learn load only for the command that runs
    from sslmed.app.results import evaluate_run

    result = evaluate_run(run_dir)
    click.echo(result.table)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a CSV for a whole folder or CSV of images (IMAGES: one folder, or a CSV with a 'path' column).",
)
@archive_options
def predict(model: Path, images: tuple[Path, ...], out: Path | None, batch_size: int, workers: int | None) -> None:
    """Classify IMAGES with MODEL (a run folder or its model/); JSON on stdout.

    For each image: the class probabilities (calibrated when the model export has a
    temperature, "calibrated": true) and, when it has one, the out-of-distribution
    score with its threshold and whether the image is flagged as unlike the training
    images.

    With --out: IMAGES is one folder or CSV, streamed in batches into a CSV (one row per
    image, unreadable ones with their error), written atomically; run the same command
    again to continue an interrupted run.
    """
    # lazily: torch loads only for the command that runs
    from sslmed.serving.predict import Predictor

    if out is not None:
        if len(images) != 1:
            raise UsageError(f"--out {out}: give one folder or CSV of images, not {len(images)} paths")
        run_archive("predict", model, images[0], out, batch_size, workers)
        return

    predictor = Predictor(model)
    results, failed = {}, 0
    for image in images:
        try:
            results[str(image)] = predictor.analyse([image])[0].as_dict()
        except ImageLoadError as exc:
            results[str(image)] = {"error": str(exc)}
            failed += 1
    click.echo(json.dumps(results, indent=2))
    if failed:
        click.echo(f"Error: {failed} of {len(images)} image(s) could not be read", err=True)
        sys.exit(1)


@hookimpl
def register_commands(cli: Any) -> None:
    for command in (run, validate, plugins, list_components, info, eval_command, predict):
        cli.add_command(command)
