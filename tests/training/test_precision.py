"""``precision: auto``: bf16 mixed precision only where the hardware computes bf16."""

from __future__ import annotations

import pytest

from sslmed.training import precision
from sslmed.training.precision import cpu_computes_bf16, resolve_precision

FLAGS = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512_vnni {extra}\n"


@pytest.mark.parametrize(("extra", "expected"), [("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("", False)])
def test_the_cpu_flags_decide(tmp_path, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(FLAGS.format(extra=extra))
    assert cpu_computes_bf16(cpuinfo) is expected


def test_no_cpuinfo_means_fp32(tmp_path):
    assert cpu_computes_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_on_a_cpu_follows_the_flags_and_an_explicit_value_wins(monkeypatch, bf16):
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: bf16)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "cpu") == ("bf16-mixed" if bf16 else "32-true")
    assert resolve_precision("auto", "auto") == ("bf16-mixed" if bf16 else "32-true")
    assert resolve_precision("32-true", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


def test_auto_on_a_gpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_computes_bf16", lambda: True)  # the host's CPU does not decide
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
