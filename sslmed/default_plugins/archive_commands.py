"""``sslmed export`` (a model folder to publish: safetensors, ONNX, config, model card)
and ``sslmed embed`` (features of a folder or CSV of images). ``sslmed predict ... --out``
is in :mod:`sslmed.default_plugins.commands` and shares :mod:`sslmed.serving.batch_predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from sslmed.core.errors import RunInterrupted
from sslmed.core.hookspecs import hookimpl

FORMATS = ("safetensors", "onnx")


def run_archive(kind: str, model: Path, source: Path, out: Path, batch_size: int, workers: int | None) -> None:
    """Predict or embed a whole archive; counts as JSON on stdout, progress on stderr."""
    # lazily: torch loads only for the command that runs
    from sslmed.serving.batch_predict import embed_archive, predict_archive

    work = predict_archive if kind == "predict" else embed_archive
    try:
        counts = work(model, source, out, batch_size=batch_size, workers=workers)
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"{out}: interrupted; the rows so far are kept, run the same command again to continue", 2
        ) from None
    click.echo(json.dumps({"out": str(out), **counts}))
    if counts["failed"]:
        failed = f"{counts['failed']} of {counts['images']} image(s) could not be read"
        click.echo(f"{failed} (see the error column of {out})", err=True)


def archive_options(function: Any) -> Any:
    """``--batch-size`` and ``--workers`` of ``predict --out`` and ``embed``."""
    function = click.option("--workers", type=click.IntRange(0), help="Decoding processes (default: cores - 1).")(
        function
    )
    return click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))(function)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("images", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="embeddings.npy (+ embeddings.paths.csv beside it) or embeddings.parquet.",
)
@archive_options
def embed(model: Path, images: Path, out: Path, batch_size: int, workers: int | None) -> None:
    """Pooled backbone features of every image in IMAGES (a folder, or a CSV with a
    'path' column) with MODEL (a run folder or a model folder).

    One row per image in input order; an unreadable image gets a row of NaN and its
    error. Written atomically; run the same command again to continue an interrupted run.
    """
    run_archive("embed", model, images, out, batch_size, workers)


@click.command(name="export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(FORMATS),
    help="Add a format (repeatable); the safetensors weights are always there.",
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="The export folder (default: MODEL/export)."
)
def export_command(model: Path, formats: tuple[str, ...], out: Path | None) -> None:
    """Write MODEL (a run folder or its model/) as a folder to publish: model.safetensors
    + model.json, config.json, a README.md model card, and model.onnx with --format onnx
    (calibrated probabilities, pooled features and the OOD score; dynamic batch)."""
    # lazily: torch loads only for the command that runs
    from sslmed.serving.hub_export import write_export
    from sslmed.serving.predict import find_model_dir

    model_dir = find_model_dir(model)
    folder = write_export(model_dir, out or model_dir.parent / "export", ("safetensors", *formats))
    click.echo(json.dumps({"out": str(folder), "files": sorted(p.name for p in folder.iterdir())}))


@hookimpl
def register_commands(cli: Any) -> None:
    for command in (embed, export_command):
        cli.add_command(command)
