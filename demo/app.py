"""Launch the sslmed classification page for a trained model.

    .venv/bin/python demo/app.py runs/quickstart/<stamp>        # or SSLMED_MODEL=... python demo/app.py

The same as ``sslmed serve``; the page itself is :func:`sslmed.serving.web.page.build_demo`,
re-exported here so that ``from demo.app import build_demo`` works too. Settings come
from the command line or the environment: ``SSLMED_MODEL`` (run or model folder),
``SSLMED_HOST`` (default 127.0.0.1), ``SSLMED_PORT`` (7860), ``SSLMED_MAX_UPLOAD_MB``
(20), ``SSLMED_CONCURRENCY`` (2). Logins come from ``SSLMED_AUTH`` (``user:password``
lines); a host other than loopback needs them, or ``SSLMED_NO_AUTH=1``.
"""

from __future__ import annotations

import argparse
import os
import sys

from sslmed.serving.web.auth import read_credentials
from sslmed.serving.web.page import build_demo
from sslmed.serving.web.server import launch_options, serve

__all__ = ["build_demo", "launch_options", "main", "serve"]


def main(argv: list[str] | None = None) -> None:
    """Parse the settings, load the model once and serve until interrupted."""
    parser = argparse.ArgumentParser(description="Serve the sslmed classification page for a trained model.")
    parser.add_argument(
        "model", nargs="?", default=os.environ.get("SSLMED_MODEL"), help="run folder or model folder (or $SSLMED_MODEL)"
    )
    parser.add_argument("--host", default=os.environ.get("SSLMED_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SSLMED_PORT", "7860")))
    parser.add_argument("--max-upload-mb", type=float, default=float(os.environ.get("SSLMED_MAX_UPLOAD_MB", "20")))
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("SSLMED_CONCURRENCY", "2")))
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("name a run folder (or set SSLMED_MODEL)")
    from sslmed.core.errors import SslmedError

    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            concurrency_limit=args.concurrency,
            credentials=read_credentials(None),
            no_auth=os.environ.get("SSLMED_NO_AUTH") == "1",
        )
    except SslmedError as exc:
        sys.exit(f"Error: {exc}")


if __name__ == "__main__":
    main()
