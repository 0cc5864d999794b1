"""Distributed training on the CPU (gloo): 2 processes, as on 2 GPUs or nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslmed.default_plugins.backbones import ResNetBackbone
from sslmed.default_plugins.simclr import SimCLRArgs, SimCLRMethod

GLOBAL_BATCH = 8


def _batch() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(GLOBAL_BATCH, 1, 16, 16, generator=generator) for _ in range(2)]


def _method() -> SimCLRMethod:
    torch.manual_seed(0)
    return SimCLRMethod(ResNetBackbone("resnet18", in_channels=1, small_input=True), SimCLRArgs(temperature=0.2)).eval()


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        share = GLOBAL_BATCH // world_size
        views = [v[rank * share : (rank + 1) * share] for v in _batch()]
        loss = _method().compute_losses({"views": views})["loss"]
        torch.save(loss.detach(), os.path.join(out_dir, f"loss{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_loss_equals_single_process_loss_on_the_same_global_batch(tmp_path):
    """NT-Xent with gather_distributed: each process sees every other process's
    negatives, so the mean of the per-process losses is the full-batch loss."""
    single = _method().compute_losses({"views": _batch()})["loss"]
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    per_process = [torch.load(tmp_path / f"loss{rank}.pt", weights_only=True) for rank in range(2)]
    assert torch.allclose(torch.stack(per_process).mean(), single, atol=1e-5), (per_process, single)
    # without gathering the processes would miss half of the negatives: the loss differs
    assert not torch.allclose(per_process[0], single, atol=1e-3) or not torch.allclose(
        per_process[1], single, atol=1e-3
    )


@pytest.mark.slow
def test_two_process_ddp_run_trains_and_evaluates(tiny_recipe, tmp_path):
    recipe = tiny_recipe(steps=3)
    sslmed = Path(sys.executable).with_name("sslmed")
    command = [
        str(sslmed),
        "run",
        str(recipe),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--set",
        "defaults.devices=2",
        "--set",
        "defaults.strategy=ddp",
        "--set",
        "defaults.batch_size=8",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    for step in ("corpus", "target"):
        meta = json.loads((run_dir / "steps" / step / "backbone.json").read_text())
        assert meta["global_step"] == 3
        assert meta["world_size"] == 2
        log = (run_dir / "steps" / step / "logs" / "metrics.csv").read_text()
        assert "train/loss_step" in log
    assert (run_dir / "results.json").is_file()
    assert "| sslmed:target | linear |" in done.stdout
    # one results table, printed once: worker processes stay quiet
    assert done.stdout.count("| model |") == 1
