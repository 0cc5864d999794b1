"""``sslmed data fetch`` and ``sslmed data list``: the catalogue's datasets on any machine.

``fetch`` downloads each dataset from its public origin (resuming, checksummed),
prepares it into the ``../shared/data`` layout and moves it into the data root in one
step; datasets already there are left alone. ``list`` shows the catalogue and what
the data root holds. Both join the ``sslmed data`` group of
:mod:`sslmed.default_plugins.data_commands`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import hookimpl
from sslmed.data.catalog import CATALOG, datasets_for_recipe, get_entry, is_present, provenance
from sslmed.data.roots import resolve_data_root


def _root(root: Path | None) -> Path:

    return Path(root) if root is not None else resolve_data_root()


def fetch_command_line(names: list[str], root: Path, default_root: bool) -> str:
    """The one command that fetches ``names`` into ``root`` (what error messages suggest)."""
    return "sslmed data fetch " + " ".join(names) + ("" if default_root else f" --root {root}")


@click.command(name="fetch")
@click.argument("names", nargs=-1)
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fetch every catalogue dataset this recipe reads (into its data root).",
)
@click.option("--all", "everything", is_flag=True, help="Fetch every dataset of the catalogue.")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data root (default: the recipe's data_root, else $SSLMED_DATA, else ../shared/data).",
)
@click.option("--force", is_flag=True, help="Fetch again even when the dataset is already there.")
@click.option(
    "--from",
    "search",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A folder holding files downloaded by hand (Kaggle); default: <root>/.downloads.",
)
@click.option(
    "--skip-unreachable",
    is_flag=True,
    help="When a server cannot be reached (offline), warn and exit 0 instead of failing (for `make run`).",
)
@click.option("--retries", default=3, show_default=True, help="Retries of a dropped download, each resuming.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def fetch_command(
    names: tuple[str, ...],
    recipe: Path | None,
    everything: bool,
    root: Path | None,
    force: bool,
    search: tuple[Path, ...],
    skip_unreachable: bool,
    retries: int,
    quiet: bool,
) -> None:
    """Download, check and prepare catalogue datasets NAMES into the data root.

    Each dataset comes from its public origin (see `sslmed data list`), is checked
    against its published checksum (or, where none is published, its structure),
    prepared into images/ + labels.csv and moved into place in one step: an
    interrupted fetch leaves no half dataset, and the next one resumes the download.
    """
    # lazily: the downloader loads only for `data fetch`
    from sslmed.data.fetch import clean_partials, fetch_dataset
    from sslmed.data.fetch.download import UnreachableError

    wanted = list(names)
    unknown = [n for n in wanted if n not in CATALOG]
    if unknown:
        raise UsageError(
            f"no dataset {', '.join(map(repr, unknown))} in the catalogue (datasets: {', '.join(CATALOG)})"
        )
    if recipe is not None:
        # lazily: torch loads only for the command that runs
        from sslmed.app.prepare import load_recipe_file

        loaded, _registry = load_recipe_file(recipe)
        wanted += [n for n in datasets_for_recipe(loaded) if n not in wanted]
        if root is None and loaded.data_root:
            root = Path(loaded.data_root)
    if everything:
        wanted += [n for n in CATALOG if n not in wanted]
    if not wanted:
        if recipe is not None:
            click.echo(f"{recipe} reads no catalogue dataset; nothing to fetch", err=True)
            return
        raise UsageError("give dataset NAMES, --recipe RECIPE or --all (see `sslmed data list`)")
    target = _root(root)
    order = [n for n in CATALOG if n in wanted]  # catalogue order: de-duplication needs the earlier sets first
    for name in order:
        clean_partials(target, name)
        if is_present(name, target) and not force:
            click.echo(f"{name}: present in {target}", err=True)
            continue
        entry = get_entry(name)
        click.echo(f"{name}: fetching {entry.title} ({entry.source})", err=True)
        try:
            result = fetch_dataset(name, target, force=force, search=search, quiet=quiet, retries=retries)
        except UnreachableError as exc:
            if not skip_unreachable:
                raise
            click.echo(f"{name}: skipped, {exc}", err=True)
            continue
        removed = f", {result.removed} duplicate(s) of other sets left out" if result.removed else ""
        images = f"{result.images} images" if result.images is not None else "ready"
        click.echo(f"{name}: {images}{removed} -> {result.path}")


def _status(name: str, root: Path) -> str:
    if not is_present(name, root):
        return "missing"
    record = provenance(name, root)
    if "fetched_at" in record:
        return f"fetched {record['fetched_at'][:10]}"
    return "present"


@click.command(name="list")
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data root to look in (default: $SSLMED_DATA, else ../shared/data).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON on stdout.")
def list_command(root: Path | None, as_json: bool) -> None:
    """The dataset catalogue: each dataset, its licence and source, and whether the data root holds it."""
    target = _root(root)
    if as_json:
        out = [
            {
                "name": e.name,
                "title": e.title,
                "images": e.images,
                "classes": e.classes,
                "licence": e.licence,
                "citation": e.citation,
                "source": e.source,
                "size_mb": e.size_mb,
                "needs_account": e.needs_account,
                "downloads": [
                    {"url": d.url, "filename": d.filename, "md5": d.md5, "pinned": d.pinned} for d in e.downloads
                ],
                "status": _status(e.name, target),
                "copy": provenance(e.name, target),
            }
            for e in CATALOG.values()
        ]
        click.echo(json.dumps(out, indent=2))
        return
    header = ("name", "images", "size", "licence", "status")
    rows = [
        (
            e.name,
            f"{e.images:,}",
            f"{e.size_mb:g} MB",
            e.licence if len(e.licence) <= 40 else e.licence[:39] + "…",
            _status(e.name, target)
            + (" (Kaggle account)" if e.needs_account and not is_present(e.name, target) else ""),
        )
        for e in CATALOG.values()
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    click.echo(f"data root: {target}", err=True)


@hookimpl(trylast=True)  # after data_commands, whose `data` group these commands join
def register_commands(cli: Any) -> None:
    group = cli.commands.get("data")
    if group is None:  # data_commands blocked or renamed: a group of our own

        @click.group(name="data")
        def group() -> None:
            """Get and look at data."""

        cli.add_command(group)
    group.add_command(fetch_command)
    group.add_command(list_command)
