"""The command line, through click's CliRunner: output, exit codes, error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_a_fresh_process_has_every_built_in_command():
    """What a user's shell gets: the command line built once, in a new process (in-process
    tests share one click group, which hid a `data fetch` that came in the wrong order)."""

    def commands(*args: str) -> set[str]:
        shown = subprocess.run(
            [sys.executable, "-m", "sslmed.app.cli", *args, "--help"], capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stderr
        listed = shown.stdout.split("Commands:")[1].splitlines()
        return {line.split()[0] for line in listed if line.strip()}

    assert {"run", "validate", "list", "info", "eval", "predict", "plugins", "data", "serve", "report"} <= commands()
    assert commands("data") == {"fetch", "list", "inspect", "split", "cache"}


def test_plugins_lists_builtins_with_hooks_and_components():
    result = invoke("plugins")
    assert result.exit_code == 0
    assert "sslmed.default_plugins.backbones" in result.output
    assert "hooks: register_backbones" in result.output
    assert "backbone:resnet18" in result.output
    data = json.loads(invoke("plugins", "--json").output)
    assert any(p["name"] == "sslmed.default_plugins.simclr" and "objective:simclr" in p["components"] for p in data)


def test_list_filters_by_kind_and_pattern():
    result = invoke("list", "backbone", "--pattern", "resnet[35]*")
    assert result.exit_code == 0
    names = [line.split()[1] for line in result.output.splitlines()]
    assert names == ["resnet34", "resnet50"]


def test_info_shows_arguments_and_defaults():
    result = invoke("info", "resnet18")
    assert result.exit_code == 0
    assert "small_input (bool, default False)" in result.output
    result = invoke("info", "simclr")  # an objective and an augmentation share the name
    assert "objective simclr" in result.output and "augmentation simclr" in result.output
    assert "temperature" in result.output and "min_scale" in result.output


def test_info_unknown_component_suggests_and_exits_2():
    result = invoke("info", "resnet81")
    assert result.exit_code == 2
    assert "Error: no component named 'resnet81'; did you mean 'resnet18'" in result.output
    assert "Traceback" not in result.output


def test_validate_good_recipe(data_dir):
    result = invoke("validate", "recipes/quickstart.yaml")
    assert result.exit_code == 0, result.output
    assert "recipes/quickstart.yaml: OK (1 step(s): corpus)" in result.output


def test_validate_bad_recipe_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        Path("recipes/quickstart.yaml")
        .read_text()
        .replace("temperature:", "temprature:")
        .replace("    epochs: 3\n", "    epochs: zero\n")
    )
    result = invoke("validate", str(bad))
    assert result.exit_code == 2
    assert "2 problems in recipe" in result.output  # every problem at once, not the first only
    assert "objective.temprature: unknown key; did you mean temperature?" in result.output
    assert "steps[0].epochs: Input should be a valid integer" in result.output
    assert "Traceback" not in result.output


def test_missing_data_is_one_clear_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(Path("recipes/quickstart.yaml").read_text() + f"data_root: {tmp_path / 'nowhere'}\n")
    result = invoke("validate", str(recipe))
    assert result.exit_code == 1
    assert "not found" in result.output and str(tmp_path / "nowhere") in result.output
    assert "Traceback" not in result.output


def test_verbose_shows_the_traceback(tmp_path):
    result = invoke("--verbose", "validate", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


def test_set_override_with_bad_path_exits_2():
    result = invoke("validate", "recipes/quickstart.yaml", "--set", "steps.9.epochs=1", "--no-data")
    assert result.exit_code == 2
    assert "steps.9 is not an item of a list of 1" in result.output


@pytest.mark.slow
def test_run_writes_the_run_folder(trained_run):
    for name in (
        "recipe.yaml",
        "manifest.json",
        "results.md",
        "results.csv",
        "results.json",
        "model/model.json",
        "model/model.safetensors",
    ):
        assert (trained_run / name).is_file(), name
    for step in ("corpus", "target"):
        assert (trained_run / "steps" / step / "backbone.safetensors").is_file()
        # a finished step's checkpoints resume nothing any more: deleted (keep_checkpoints: false)
        assert not (trained_run / "steps" / step / "checkpoints").exists()
    assert not list(trained_run.rglob("*.tmp")), "no half-written files are left"


@pytest.mark.slow
def test_eval_reprints_the_table(trained_run):
    result = invoke("-q", "eval", str(trained_run))
    assert result.exit_code == 0, result.output
    assert "| sslmed:target | linear | 100% |" in result.output


@pytest.mark.slow
def test_predict_prints_json_probabilities(trained_run, data_dir, tmp_path):
    image = next((data_dir / "covid3" / "images" / "Pneumonia").iterdir())
    result = CliRunner().invoke(cli, ["predict", str(trained_run), str(image)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)[str(image)]
    probabilities = answer["probabilities"]
    ood = answer["out_of_distribution"]
    assert answer["calibrated"] is True and set(ood) == {"score", "threshold", "flagged", "input_gate"}
    assert set(ood["input_gate"]) == {"score", "threshold"}  # the input-statistics gate of every new export
    measured = json.loads((trained_run / "model" / "model.json").read_text())["ood"]["measured"]
    assert measured["not_cxr_images"] == 100 and 0 <= measured["not_cxr_flagged"] <= 1  # measured at export
    assert set(probabilities) == {"Covid-19", "No_findings", "Pneumonia"}
    assert abs(sum(probabilities.values()) - 1) < 1e-5
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    result = CliRunner().invoke(cli, ["predict", str(trained_run), str(image), str(broken)])
    assert result.exit_code == 1
    assert "not an image" in json.loads(result.stdout)[str(broken)]["error"]


def test_predict_with_a_folder_that_is_no_model(tmp_path):
    result = invoke("predict", str(tmp_path), "x.png")
    assert result.exit_code == 1
    assert "no exported model here" in result.output


@pytest.mark.slow
def test_evaluation_without_trust_exports_an_uncalibrated_model(tiny_recipe, data_dir, tmp_path):
    """``evaluation.trust: false`` (experiment grids): no calibration, no OOD score, and
    the model says so instead of pretending."""
    recipe = tiny_recipe(steps=1, extra="")
    recipe.write_text(recipe.read_text().replace("  baselines: []\n", "  baselines: []\n  trust: false\n"))
    result = invoke("-q", "run", str(recipe), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "runs" / "tiny").iterdir())
    assert "Calibration of the exported model" not in (run / "results.md").read_text()
    model = json.loads((run / "model" / "model.json").read_text())
    assert not model.get("calibration") and not model.get("ood")
    image = next((data_dir / "covid3" / "images" / "Pneumonia").iterdir())
    answer = json.loads(CliRunner().invoke(cli, ["predict", str(run), str(image)]).stdout)[str(image)]
    assert answer["calibrated"] is False and "out_of_distribution" not in answer
