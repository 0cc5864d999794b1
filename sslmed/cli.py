"""Stable import path for plugins: re-exports :mod:`sslmed.app.cli` (see docs/reference/architecture.md).

Code inside sslmed imports :mod:`sslmed.app.cli` itself; this module exists so that
third-party plugins written against ``sslmed.cli`` keep working.
"""

from sslmed.app.cli import (
    SslmedGroup,
    cli,
    main,
)

__all__ = [
    "SslmedGroup",
    "cli",
    "main",
]

if __name__ == "__main__":
    main()
