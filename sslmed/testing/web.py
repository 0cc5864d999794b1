"""Helpers for the web-app tests: a demo launched on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sslmed.serving.web.server import launch_options
from sslmed.testing.models import free_port


@contextmanager
def launched_demo(demo: Any, *, api: bool = False, **options: Any) -> Iterator[str]:
    """``demo`` (from :func:`sslmed.serving.web.page.build_demo`) serving on 127.0.0.1 with
    ``launch_options(**options)`` (``api``: with ``POST /api/classify``); yields its URL
    and closes it when the block ends."""
    port = free_port()
    launch = launch_options(demo=demo if api else None, **options)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
