"""Shared fixtures and markers: the real data folder, small recipes on real data, and
the skip conditions written once.

Markers (declared in pyproject.toml):

* ``needs_data``: skipped when the real data (``../shared/data`` or ``$SSLMED_DATA``,
  :func:`sslmed.data.roots.resolve_data_root`) is absent;
* ``needs_chromium``: skipped without Debian's chromium (``apt-get install chromium``);
* ``gpu``: skipped without a CUDA device;
* ``slow``: trains for minutes on real data (``make test-fast`` leaves them out).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sslmed.data.roots import resolve_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = resolve_data_root()
CHROMIUM = os.environ.get("SSLMED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def data_present() -> bool:
    """True when the real data the tests read is there (covid3 is in every copy of it)."""
    return (DATA / "covid3" / "labels.csv").is_file()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_data") and not data_present():
        pytest.skip(f"real data not found at {DATA} (see ../shared/data/README.md or set SSLMED_DATA)")
    if item.get_closest_marker("needs_chromium") and not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    if item.get_closest_marker("gpu"):
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real chest X-ray data (../shared/data); tests needing it skip without it."""
    if not data_present():
        pytest.skip(f"real data not found at {DATA} (see ../shared/data/README.md or set SSLMED_DATA)")
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

    from sslmed.app.cli import cli

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
