"""Bounded property-based fuzzing (hypothesis, derandomised) of recipes, ``--set`` values,
image files, uploads, ``/api/classify`` bodies, ``model.json``, image-cache files and
archives; ``bench/fuzz.py`` runs the same targets longer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz  # noqa: E402

sys.path.pop(0)

#: cases per target in CI: about 60 s for the first four on 2 cores, a few more for the rest
EXAMPLES = {"recipe YAML (validate)": 60, "--set values": 60, "image bytes (load_image)": 60}
EXAMPLES["uploads (web page handler)"] = 30
EXAMPLES["upload bodies (POST /api/classify)"] = 20
EXAMPLES["model.json (Predictor)"] = 12
EXAMPLES["image cache files (ImageCache.open)"] = 60
EXAMPLES["archive members (open_archive)"] = 60


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict:
    """Every target, built once (the model exports take seconds)."""
    folder = tmp_path_factory.mktemp("fuzz")
    return {target: (strategy, check) for target, strategy, check in fuzz.targets(folder)}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_fuzz_target_has_no_failures(name: str, found: dict) -> None:
    strategy, check = found[name]
    result = fuzz.run_target(name, strategy, check, EXAMPLES[name], seed=0)
    assert result["cases"] >= EXAMPLES[name] // 2
    assert result["failures"] == 0, result["first_failure"]
    assert result["rss_growth_mb"] < fuzz.MEMORY_BOUND_MB
