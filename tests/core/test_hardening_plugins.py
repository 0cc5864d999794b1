"""Third-party plugins that misbehave: each failure names the plugin, gives the
SSLMED_DISABLE_PLUGINS hint, and never takes ``sslmed plugins`` (or other commands) down."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.core import plugins

BAD_PLUGINS = {
    "exits_on_import": "import sys\nsys.exit(3)\n",
    "raising_commands": """
        from sslmed.core.hookspecs import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("cannot add my command")
    """,
    "duplicate_backbone": """
        from sslmed.core.hookspecs import hookimpl

        @hookimpl
        def register_backbones(register):
            register("resnet18", lambda args, **kw: None)
    """,
    "raising_registration": """
        from sslmed.core.hookspecs import hookimpl

        @hookimpl
        def register_augmentations(register):
            register("half_registered", lambda args, **kw: None)
            raise ValueError("oops in the middle")
    """,
    "misspelt_hook": """
        from sslmed.core.hookspecs import hookimpl

        @hookimpl
        def register_backbone(register):
            pass
    """,
}


@pytest.fixture
def bad_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Throwaway modules on sys.path, offered as entry points of the ``sslmed`` group."""
    for name, text in BAD_PLUGINS.items():
        (tmp_path / f"sslmed_bad_{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint(name, f"sslmed_bad_{name}", "sslmed") for name in BAD_PLUGINS]
    points.append(importlib.metadata.EntryPoint("duplicate_backbone", "sslmed_bad_duplicate_backbone", "sslmed"))
    monkeypatch.setattr(plugins, "_entry_points", lambda: points)
    plugins.reload()
    yield list(BAD_PLUGINS)
    for name in BAD_PLUGINS:
        sys.modules.pop(f"sslmed_bad_{name}", None)
    plugins.reload()


def fresh_cli() -> click.Group:
    """A copy of the command group, so plugin commands do not stay on the real one."""
    group = click.Group(name="sslmed", commands=dict(cli.commands), params=cli.params, callback=cli.callback)
    group.__class__ = type(cli)
    return group


def test_every_misbehaving_plugin_is_named_and_skipped(bad_plugins: list[str]) -> None:
    group = fresh_cli()
    plugins.extend_cli(group)
    result = CliRunner().invoke(group, ["plugins"])
    assert result.exit_code == 0, result.output
    for name in bad_plugins:
        assert f"{name} (external, FAILED, skipped)" in result.output, name
        assert f"SSLMED_DISABLE_PLUGINS={name} to skip it" in result.output
    assert "SystemExit(3) (the plugin tried to end the program)" in result.output
    assert "RuntimeError: cannot add my command" in result.output
    assert (
        "registers backbone 'resnet18', which plugin 'sslmed.default_plugins.backbones' also registers" in result.output
    )
    assert "ValueError: oops in the middle" in result.output
    assert "register_backbone" in result.output


def test_other_commands_keep_working_without_the_bad_plugins(bad_plugins: list[str]) -> None:
    group = fresh_cli()
    plugins.extend_cli(group)
    result = CliRunner().invoke(group, ["list", "backbone"])
    assert result.exit_code == 0, result.output
    assert "resnet18" in result.output and "sslmed.default_plugins.backbones" in result.output
    registry = plugins.get_registry()
    assert registry.get("backbone", "resnet18").plugin == "sslmed.default_plugins.backbones"
    assert "half_registered" not in registry.names("augmentation")  # nothing of a failed plugin stays


def test_failures_are_warned_once_with_the_hint(bad_plugins: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="sslmed.core.plugins"):
        plugins.plugin_infos()
        first = len(caplog.records)
        plugins.plugin_infos()
    assert len(caplog.records) == first  # asking again warns no more
    messages = [r.getMessage() for r in caplog.records]
    for name in ("exits_on_import", "duplicate_backbone", "raising_registration", "misspelt_hook"):
        found = [m for m in messages if m.startswith(f"plugin {name!r} failed and was skipped")]
        assert found and all(f"SSLMED_DISABLE_PLUGINS={name}" in m for m in found), (name, messages)


def test_disabling_a_bad_plugin_silences_it(bad_plugins: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLMED_DISABLE_PLUGINS", ",".join(bad_plugins))
    plugins.reload()
    assert not [info for info in plugins.plugin_infos() if info.error]
