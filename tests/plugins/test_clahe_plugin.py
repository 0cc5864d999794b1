"""The example third-party plugin (plugins/sslmed-clahe), seen from sslmed's side.

CI installs it with ``pip install -e plugins/sslmed-clahe`` (``make setup``); these tests
check that sslmed finds it through its entry point, lists it, runs a recipe that uses
it on real data, and reports its argument errors exactly like the built-ins'.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sslmed.app.cli import cli
from sslmed.data.roots import repository_data_dir

DATA = repository_data_dir()

pytestmark = pytest.mark.skipif(
    not any(ep.name == "clahe" for ep in importlib.metadata.entry_points(group="sslmed")),
    reason="sslmed-clahe is not installed (make setup runs: pip install -e plugins/sslmed-clahe)",
)

RECIPE = """\
name: clahe-smoke
data:
  pneumonia:
    name: medmnist_npz
    path: pneumoniamnist/pneumoniamnist.npz
steps:
  - name: pretrain
    data: pneumonia
    backbone: {{name: resnet18, small_input: true}}
    objective: {{name: simclr}}
    augmentations:
      - {{name: clahe, {clahe_args}}}
      - {{name: simclr, {simclr_args}}}
    image_size: 32
    batch_size: 16
    max_steps: 2
"""


def write_recipe(
    tmp_path: Path, clahe_args: str = "clip_limit: 3.0, tile_grid: 4, p: 1.0", simclr_args: str = "min_scale: 0.3"
) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(clahe_args=clahe_args, simclr_args=simclr_args), encoding="utf-8")
    return path


def test_sslmed_plugins_lists_it():
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^clahe 0\.1\.0 \(external\)$", result.output, re.M), result.output
    listed = {p["name"]: p for p in json.loads(CliRunner().invoke(cli, ["plugins", "--json"]).output)}
    assert listed["clahe"]["hooks"] == ["register_augmentations"]
    assert listed["clahe"]["components"] == ["augmentation:clahe"]
    assert listed["clahe"]["builtin"] is False and listed["clahe"]["error"] is None


def test_list_and_info_show_it():
    listing = CliRunner().invoke(cli, ["list", "augmentation"]).output
    assert re.search(r"^augmentation +clahe +CLAHE .*\[image\]  \(clahe\)$", listing, re.M), listing
    info = CliRunner().invoke(cli, ["info", "clahe"]).output
    for line in (
        "metadata: stage=image",
        "clip_limit (float, default 2.0)",
        "tile_grid (int, default 8)",
        "p (float, default 1.0)",
    ):
        assert line in info


def test_blocked_by_the_environment_variable():
    env = {**os.environ, "SSLMED_DISABLE_PLUGINS": "clahe"}
    out = subprocess.run(
        [sys.executable, "-m", "sslmed.app.cli", "list", "augmentation"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "simclr" in out.stdout and "clahe" not in out.stdout


def test_recipe_using_it_validates_and_runs_on_real_data(tmp_path):
    if not (DATA / "pneumoniamnist" / "pneumoniamnist.npz").is_file():
        pytest.skip(f"real data not found under {DATA}")
    recipe = write_recipe(tmp_path)
    runner = CliRunner()
    checked = runner.invoke(cli, ["validate", str(recipe)])
    assert checked.exit_code == 0, checked.output
    assert "OK (1 step(s): pretrain)" in checked.output
    ran = runner.invoke(cli, ["-q", "run", str(recipe), "--runs-dir", str(tmp_path / "runs")])
    assert ran.exit_code == 0, ran.output
    (run_dir,) = (tmp_path / "runs" / "clahe-smoke").iterdir()
    step = run_dir / "steps" / "pretrain"
    assert (step / "backbone.safetensors").is_file()
    assert json.loads((step / "backbone.json").read_text())["global_step"] == 2
    assert "clahe" in (run_dir / "recipe.yaml").read_text()
    plugins = {p["name"]: p["version"] for p in json.loads((run_dir / "manifest.json").read_text())["plugins"]}
    assert plugins["clahe"] == "0.1.0"  # the manifest records which plugin version ran


def problems(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.startswith("  ")]


def test_argument_errors_are_reported_like_the_builtins(tmp_path):
    recipe = write_recipe(
        tmp_path, clahe_args="clip_limt: 3.0, tile_grid: 0, p: 2", simclr_args="min_scal: 0.3, hf_prob: 2"
    )
    result = CliRunner().invoke(cli, ["validate", "--no-data", str(recipe)])
    assert result.exit_code == 2
    found = problems(result.output)
    where = re.escape(str(recipe))
    line = r"(?P<file>.+):(?P<line>\d+) (?P<key>steps\[0\]\.augmentations\[\d\]\.\w+): (?P<message>.+)"
    parsed = [re.fullmatch(line, p) for p in found]
    assert all(parsed) and all(re.fullmatch(where, m["file"]) for m in parsed), found
    by_key = {m["key"]: (int(m["line"]), m["message"]) for m in parsed}
    # the plugin's errors ...
    assert by_key["steps[0].augmentations[0].clip_limt"] == (12, "unknown key; did you mean clip_limit?")
    assert by_key["steps[0].augmentations[0].tile_grid"][1].startswith("Input should be greater than or equal to 1")
    assert by_key["steps[0].augmentations[0].p"][1].startswith("Input should be less than or equal to 1")
    # ... read exactly like the built-in simclr's, on the next line of the recipe
    assert by_key["steps[0].augmentations[1].min_scal"] == (13, "unknown key; did you mean min_scale?")
    assert by_key["steps[0].augmentations[1].hf_prob"][1].startswith("Input should be less than or equal to 1")
    assert f"{recipe}: 5 problems in recipe" in result.output


def test_a_build_error_names_the_component():
    from sslmed.core.errors import UsageError
    from sslmed.core.plugins import get_registry

    with pytest.raises(UsageError, match=r"augmentation 'clahe': tile_grid: Input should be less than or equal to 64"):
        get_registry().build("augmentation", {"name": "clahe", "tile_grid": 100})
