"""Bounded property-based fuzzing (hypothesis, derandomised) of recipes, ``--set`` values,
image files and uploads; ``bench/fuzz.py`` runs the same targets longer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import fuzz  # noqa: E402

sys.path.pop(0)

#: cases per target in CI: about 60 s for all four on 2 cores
EXAMPLES = {"recipe YAML (validate)": 60, "--set values": 60, "image bytes (load_image)": 60}
EXAMPLES["uploads (web page handler)"] = 30


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_fuzz_target_has_no_failures(name: str, tmp_path: Path, data_dir: Path) -> None:
    found = {target: (strategy, check) for target, strategy, check in fuzz.targets(tmp_path)}
    strategy, check = found[name]
    result = fuzz.run_target(name, strategy, check, EXAMPLES[name], seed=0)
    assert result["cases"] >= EXAMPLES[name] // 2
    assert result["failures"] == 0, result["first_failure"]
    assert result["rss_growth_mb"] < fuzz.MEMORY_BOUND_MB
