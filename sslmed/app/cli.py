"""The ``sslmed`` command group: options, logging and error handling shared by every command.

The commands themselves all come through the ``register_commands`` hook: the built-in
ones from ``sslmed/default_plugins/commands.py`` (``run``, ``validate``, ``plugins``,
``list``, ``info``, ``eval``, ``predict``) and the other command modules there
(``data``, ``report``, ``serve``), exactly as a third-party plugin adds its own. The
group loads them the first time it is asked for a command.

Progress and logs go to stderr, results to stdout. Errors print as one line and exit
with 2 (a problem with the request) or 1 (a problem while running); ``--verbose``
shows the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from typing import Any

import click

from sslmed import __version__
from sslmed.core.errors import SslmedError


class SslmedGroup(click.Group):
    """Loads the plugins' commands when first needed; turns sslmed's errors into one
    clear line and an exit code."""

    _plugin_commands_loaded = False

    def _load_plugin_commands(self) -> None:
        if not self._plugin_commands_loaded:
            self._plugin_commands_loaded = True  # before loading: a plugin may list commands itself
            # lazily: plugins (and torch) load on the first command, not for `--version`
            from sslmed.core.plugins import extend_cli

            extend_cli(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SslmedError as exc:
            if ctx.meta.get("sslmed.verbose"):
                traceback.print_exc()
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # an unexpected failure: still no traceback by default
            if ctx.meta.get("sslmed.verbose"):
                traceback.print_exc()
            click.echo(f"Error: {type(exc).__name__}: {exc} (run with --verbose for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=SslmedGroup)
@click.version_option(__version__, prog_name="sslmed")
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs and tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Self-supervised pre-training for medical images, built from plugins."""
    ctx.meta["sslmed.verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    if not verbose:
        # Lightning's own deprecation notice about torch internals; nothing a user can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
