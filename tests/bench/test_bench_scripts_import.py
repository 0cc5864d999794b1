"""Every benchmark script imports: the names it takes from the library and from the other
bench scripts exist (a merge once left onnx_latency.py and archive_throughput.py importing
a helper that had been folded into ``export_resnet18(trust=True)``, so neither could run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py"))


@pytest.mark.needs_data  # some scripts find the data root when they load
@pytest.mark.parametrize("name", SCRIPTS)
def test_the_script_imports_and_has_a_main(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # bench scripts import each other by name
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, f"bench_{name}", module)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"
