"""Issue 21 (10): the SIGTERM hint is a command that works, also for runs started with --set."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.app.prepare import load_recipe_file
from sslmed.app.runner import recipe_document, resolve_resume, resume_hint
from sslmed.artifacts.rundir import RunDir
from sslmed.core.errors import RunInterrupted, UsageError
from sslmed.testing.recipes import ONE_STEP

RECIPE = ONE_STEP.replace("name: good", "name: q", 1)
OVERRIDES = ("steps.0.epochs=15", "name=q15")


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, RunDir]:
    """A run folder as ``sslmed run r.yaml --set steps.0.epochs=15 --set name=q15`` leaves it."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    recipe, _ = load_recipe_file(path, OVERRIDES)
    run = RunDir.new(tmp_path / "runs", recipe.name)
    run.path.mkdir(parents=True)
    run.write_recipe(recipe_document(recipe))
    return path, run


def test_the_hint_after_sigterm_is_a_command_that_resumes(started: tuple[Path, RunDir]) -> None:
    path, run = started
    with pytest.raises(RunInterrupted) as stopped:
        with resume_hint(path, run):
            raise RunInterrupted("stopped by SIGTERM", 15)
    command = shlex.split(str(stopped.value).split("Continue it with: ", 1)[1])
    assert command[:2] == ["sslmed", "run"] and "--set" not in command
    recipe_arg, resume_arg = command[2], command[command.index("--resume") + 1]
    recipe, _ = load_recipe_file(recipe_arg)
    assert resolve_resume(recipe, Path("runs"), resume_arg) == run.path  # before: "the recipe differs"
    # the command the old hint gave is the one that fails
    with pytest.raises(UsageError, match="the recipe differs"):
        resolve_resume(load_recipe_file(path)[0], Path("runs"), str(run.path))


def test_a_run_folder_alone_resumes(started: tuple[Path, RunDir], monkeypatch: pytest.MonkeyPatch) -> None:
    import sslmed.app.runner as runner

    _path, run = started
    calls = []
    monkeypatch.setattr(runner, "run_recipe", lambda recipe, overrides, **kw: calls.append((recipe, kw)))
    result = CliRunner().invoke(cli, ["run", str(run.path)])
    assert result.exit_code == 0, result.output
    recipe, options = calls[0]
    assert Path(recipe) == run.recipe_file and options["resume"] == str(run.path)
    refused = CliRunner().invoke(cli, ["run", str(run.path), "--set", "steps.0.epochs=1"])
    assert refused.exit_code == 2 and "its own recipe" in refused.output
    plain = CliRunner().invoke(cli, ["run", str(run.path.parent)])
    assert plain.exit_code == 2 and "no recipe.yaml" in plain.output
