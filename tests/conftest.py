"""Shared fixtures: the real data folder and small recipes on real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SSLMED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real chest X-ray data (../shared/data); tests needing it skip without it."""
    if not (DATA / "covid3" / "labels.csv").is_file():
        pytest.skip(f"real data not found at {DATA} (set SSLMED_DATA)")
    return DATA


TINY_RECIPE = """\
name: tiny
data:
  pneumoniamnist:
    name: medmnist_npz
    path: pneumoniamnist/pneumoniamnist.npz
    classes: [normal, pneumonia]
  covid3:
    name: csv
    path: covid3
    patient_column: patient_id
defaults:
  backbone: {{name: resnet18, small_input: true}}
  objective: {{name: {objective}}}
  augmentations: [{{name: simclr}}]
  image_size: 16
  batch_size: 16
  max_steps: {steps}
  checkpoint_every_n_steps: 2
  log_every_n_steps: 1
  accelerator: cpu
steps:
  - name: corpus
    data: pneumoniamnist
  - name: target
    data: covid3
    init_from: corpus
evaluation:
  data: covid3
  probes: [linear]
  baselines: []
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path, data_dir: Path):
    """Write a two-step recipe on real data that trains a few steps at 16 px."""

    def write(objective: str = "simclr", steps: int = 2, extra: str = "") -> Path:
        path = tmp_path / "tiny.yaml"
        path.write_text(f"data_root: {data_dir}\n" + TINY_RECIPE.format(objective=objective, steps=steps) + extra)
        return path

    return write


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir: Path) -> Path:
    """One finished two-step run of the tiny recipe (through the CLI), shared by tests."""
    from click.testing import CliRunner

    from sslmed.cli import cli

    folder = tmp_path_factory.mktemp("trained")
    recipe = folder / "tiny.yaml"
    recipe.write_text(f"data_root: {data_dir}\n" + TINY_RECIPE.format(objective="simclr", steps=2))
    result = CliRunner().invoke(cli, ["-q", "run", str(recipe), "--runs-dir", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    return next((folder / "runs" / "tiny").iterdir())


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_a_temporary_folder(tmp_path_factory):
    """Image caches built by tests go to a temporary folder, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("image-cache")
    old = os.environ.get("SSLMED_CACHE_DIR")
    os.environ["SSLMED_CACHE_DIR"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("SSLMED_CACHE_DIR", None)
    else:
        os.environ["SSLMED_CACHE_DIR"] = old
