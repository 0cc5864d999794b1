"""The ``sslmed report`` command, added through the ``register_commands`` hook."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from sslmed.core.hookspecs import hookimpl


@click.command(name="report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
    help="Folder for report.md, report.html and the figures.",
)
@click.option(
    "--bootstrap",
    "samples",
    type=click.IntRange(0, 100_000),
    default=1000,
    show_default=True,
    help="Bootstrap resamples of the test images for single-seed CIs (0: none).",
)
@click.option("--no-figures", is_flag=True, help="Tables only.")
@click.option("--title", default="sslmed comparison report", show_default=True)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file naming and ordering the methods (recipe name -> label) and listing claims to check, "
    "e.g. bench/thesis_labels.yaml.",
)
def report(
    run_dirs: tuple[Path, ...], out: Path, samples: int, no_figures: bool, title: str, labels_file: Path | None
) -> None:
    """Compare finished runs: one Markdown/HTML report with 95% CIs and figures.

    Each RUN_DIR is a run folder, or a folder with run folders below it (e.g. runs/).
    """
    # lazily: matplotlib and torch load only for `report`
    from sslmed.report import Labels, build_report

    labels = Labels.from_file(labels_file) if labels_file else None
    command = "sslmed " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["report"] else None
    path = build_report(
        run_dirs, out, samples=samples, figures=not no_figures, title=title, command=command, labels=labels
    )
    click.echo(f"report: {path}", err=True)
    click.echo(str(path))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(report)
