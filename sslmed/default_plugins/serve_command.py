"""``sslmed serve``: the classification web page and API over a trained model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import hookimpl


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
    help="Folder of example images (default: a few test images per class of the run's data when present, "
    "else images of ../shared/data labelled with the model's classes).",
)
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File of 'user:password' lines: every page and endpoint needs a login "
    "(default: $SSLMED_AUTH if set). Required when --host is not loopback.",
)
@click.option(
    "--no-auth",
    is_flag=True,
    help="Serve a non-loopback --host without a login (the page and the log say so).",
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
    auth_file: Path | None,
    no_auth: bool,
) -> None:
    """Serve the web page and HTTP API for MODEL (a run folder or its model/).

    The page classifies uploaded X-rays and shows Grad-CAM; programs call
    POST /api/classify, or the /predict endpoint with gradio_client (see
    docs/serving.md). Binding beyond loopback needs logins (--auth-file or
    $SSLMED_AUTH) or --no-auth. Nothing is shared publicly; stop with Ctrl-C.
    """
    # lazily: torch loads only for the command that runs; Gradio (seconds) loads only for `serve`
    from sslmed.serving.predict import Predictor
    from sslmed.serving.web.auth import is_loopback, read_credentials
    from sslmed.serving.web.server import serve as serve_demo

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    credentials = read_credentials(auth_file)
    if credentials and no_auth:
        raise UsageError("--no-auth and logins (--auth-file or $SSLMED_AUTH) contradict each other; give one")
    if not credentials and not no_auth and not is_loopback(host):
        raise UsageError(
            f"--host {host}: other machines could use this page; give logins with --auth-file FILE "
            "or $SSLMED_AUTH ('user:password'), or pass --no-auth to serve it without a login"
        )
    predictor = Predictor(model)  # errors (missing/foreign model) surface as one line
    if no_auth and not is_loopback(host):
        click.echo(f"warning: serving on {host} WITHOUT a login (--no-auth): anyone there can use it.", err=True)
    login = f", login required ({len(credentials)} user(s))" if credentials else ""
    click.echo(f"serving {predictor.model_dir} on http://{host}:{port}{login} (Ctrl-C to stop)", err=True)
    serve_demo(
        predictor,
        host=host,
        port=port,
        max_upload_mb=max_upload_mb,
        concurrency_limit=concurrency,
        examples_dir=examples_dir,
        threads=threads,
        credentials=credentials,
        no_auth=no_auth,
    )


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(serve)
