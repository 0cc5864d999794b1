"""Launching the page: Gradio launch options (host, port, queue, limits, logins) and
:func:`serve`, which refuses to listen beyond loopback without logins.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from sslmed.core.errors import UsageError
from sslmed.serving.predict import Predictor
from sslmed.serving.web.api import UploadLimit, api_routes
from sslmed.serving.web.auth import AUTH_ENV, NO_AUTH_NOTICE, LoginGuard, is_loopback
from sslmed.serving.web.page import build_demo, example_files
from sslmed.serving.web.service import DEFAULT_CONCURRENCY, DEFAULT_MAX_UPLOAD_MB

DEFAULT_HOST = "127.0.0.1"


DEFAULT_PORT = 7860


#: queued requests beyond this are refused at once instead of waiting without bound


def launch_options(
    examples_dir: str | Path | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    demo: gr.Blocks | None = None,
    guard: LoginGuard | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that go with :func:`build_demo`.

    Only the examples folder is served besides uploads; :class:`UploadLimit` refuses uploads
    far over the limit (twice it, plus 1 MB) so that huge files never reach the disk,
    while the page explains the limit for the ones in between. With ``demo`` (made by
    :func:`build_demo`) the app also gets ``POST /api/classify``; with ``guard`` every
    page, Gradio endpoint and ``/api/classify`` needs a login.
    """
    # the example files themselves, not their folder: a link or file added there later is not
    # served; then the examples the page chose (the run's test images, or the data root's),
    # those files only, and only plain files (never a link)
    allowed = example_files(examples_dir)[0]
    allowed += [
        path
        for path in getattr(demo, "sslmed_examples", [])
        if path not in allowed and not Path(path).is_symlink() and Path(path).is_file()
    ]
    from starlette.middleware import Middleware

    hard_limit = int(max_upload_mb * 2e6 + 1e6)
    app_kwargs: dict[str, Any] = {
        "middleware": [Middleware(UploadLimit, limit=hard_limit, max_upload_mb=max_upload_mb)]
    }
    service = getattr(demo, "sslmed_service", None)
    if service is not None:
        app_kwargs["routes"] = api_routes(service, guard, getattr(demo, "sslmed_concurrency", 2))
    extra: dict[str, Any] = {"app_kwargs": app_kwargs}
    if guard is not None:
        extra["auth"] = guard
        extra["auth_message"] = "This sslmed server needs a login (ask whoever runs it)."
    return {
        **extra,
        "allowed_paths": allowed,
        # no Gradio max_file_size: its page would refuse a big file itself, in Gradio's words;
        # UploadLimit refuses every body past the hard limit on the server, counted as the
        # bytes arrive (with or without Content-Length), in sslmed's words
        "share": False,
        "show_error": False,
        "footer_links": ["api"],
        "theme": gr.themes.Soft(),
    }


def serve(
    model: str | Path | Predictor,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    examples_dir: str | Path | None = None,
    threads: int | None = None,
    block: bool = True,
    credentials: dict[str, str] | None = None,
    no_auth: bool = False,
) -> gr.Blocks:
    """Load ``model`` (a run folder, model folder or :class:`Predictor`) once and serve the
    page on ``host:port`` (loopback by default, never shared). Blocks unless ``block`` is
    false; returns the running demo (``demo.close()`` stops it).

    ``credentials`` (``{user: password}``, see :func:`read_credentials`) make every page
    and endpoint need a login. A ``host`` other than loopback needs them, or
    ``no_auth=True``, which the page and the log then announce.

    ``threads`` sets torch's threads per request; by default the CPU cores divided by
    ``concurrency_limit``, so that requests running at once do not oversubscribe the
    cores (on a busy 2-core machine, 2 threads per request ran ResNet-18 5 times slower
    than 1).
    """
    import logging

    notice = None
    if not credentials and not is_loopback(host):
        if not no_auth:
            raise UsageError(
                f"--host {host}: other machines could use this page; give logins with --auth-file FILE "
                f"or ${AUTH_ENV} ('user:password'), or pass --no-auth to serve it without a login"
            )
        notice = NO_AUTH_NOTICE.format(host=host)
        logging.getLogger(__name__).warning("serving on %s WITHOUT a login (--no-auth): anyone there can use it", host)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // concurrency_limit))
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    demo = build_demo(
        predictor,
        examples_dir=examples_dir,
        max_upload_mb=max_upload_mb,
        concurrency_limit=concurrency_limit,
        notice=notice,
    )
    guard = LoginGuard(credentials) if credentials else None
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=False,
        **launch_options(examples_dir, max_upload_mb, demo=demo, guard=guard),
    )
    return demo
