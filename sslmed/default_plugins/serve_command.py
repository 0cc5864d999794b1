"""``sslmed serve``: the classification web page and API over a trained model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from sslmed.hookspecs import hookimpl


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind; the default serves this machine only."
)
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option(
    "--max-upload-mb",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Refuse image files larger than this.",
)
@click.option(
    "--concurrency",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests that run at once; the rest wait in the queue.",
)
@click.option(
    "--examples",
    "examples_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of example images (default: ../shared/data/samples when present).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch threads per request (default: CPU cores / concurrency).",
)
def serve(
    model: Path,
    host: str,
    port: int,
    max_upload_mb: float,
    concurrency: int,
    examples_dir: Path | None,
    threads: int | None,
) -> None:
    """Serve the web page and HTTP API for MODEL (a run folder or its model/).

    The page classifies uploaded X-rays and shows Grad-CAM; programs call the
    /predict endpoint with gradio_client or HTTP (see docs/serving.md).
    Nothing is shared publicly; stop with Ctrl-C.
    """
    from sslmed.predict import Predictor
    from sslmed.webapp import serve as serve_demo

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    predictor = Predictor(model)  # errors (missing/foreign model) surface as one line
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}: other machines can reach this page; it has no login.", err=True)
    click.echo(f"serving {predictor.model_dir} on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve_demo(
        predictor,
        host=host,
        port=port,
        max_upload_mb=max_upload_mb,
        concurrency_limit=concurrency,
        examples_dir=examples_dir,
        threads=threads,
    )


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(serve)
