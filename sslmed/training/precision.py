"""``precision: auto``: bf16 mixed precision where the hardware computes bf16, else fp32.

Measured side by side (``bench/cpu_precision.py``, docs/benchmarks.md): on a CPU with
AVX-512 BF16 a ResNet-18 SimCLR step runs 1.2x (32 px) to 1.9x (64 px) faster under
bf16 autocast than in fp32, and on a CPU without bf16 instructions 2-2.6x *slower*
(bf16 is emulated there). So the choice depends on the CPU's flags, read once from
``/proc/cpuinfo``; on a GPU, bf16 where CUDA supports it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 arithmetic
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_computes_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bf16 instructions (False where the flags cannot be read)."""
    try:
        flags = cpuinfo.read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a step trains in: ``precision`` itself unless it is ``auto``."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    return "bf16-mixed" if cpu_computes_bf16() else "32-true"
