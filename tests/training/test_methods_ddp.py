"""Every objective under 2-process DDP (gloo, CPU) gives the loss and the gradients of one
process on the concatenated batch: negatives and batch statistics are gathered where the
method needs them, and gradients come back right after DDP averages them.

One pair of processes computes every method (starting processes is the slow part); each
test then compares one method. BatchNorm runs in eval mode (per-process batch statistics
are another matter: ``sync_batchnorm``); the losses' own batch statistics (Barlow Twins'
standardisation, VICReg's variance and covariance) are the point of the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # methods_support, for the spawned processes
from methods_support import METHODS, build, random_views  # noqa: E402

WORLD = 2
BATCH = 8  # global; 4 per process


def _method(name: str):
    return build(name, tiny=True).eval()


def _gradient(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.backbone.parameters() if p.grad is not None])


def _queue(model) -> torch.Tensor | None:
    bank = getattr(getattr(model, "criterion", None), "memory_bank", None)
    return None if bank is None or bank.size[0] == 0 else bank.bank.clone()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        share = BATCH // WORLD
        results = {}
        for name in METHODS:
            model = _method(name)
            views = [v[rank * share : (rank + 1) * share] for v in random_views(name, BATCH)]
            loss = model.compute_losses({"views": views})["loss"]
            loss.backward()
            gradient = _gradient(model)
            dist.all_reduce(gradient)  # what DDP does: the mean of the processes' gradients
            results[name] = {"loss": loss.detach(), "gradient": gradient / WORLD, "queue": _queue(model)}
        # lightly's own gathering in BarlowTwinsLoss, for the record
        from lightly.loss import BarlowTwinsLoss

        z = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(5))
        z_a, z_b = z[rank * share : (rank + 1) * share], z.flip(0)[rank * share : (rank + 1) * share]
        results["lightly_barlow"] = BarlowTwinsLoss(gather_distributed=True)(z_a, z_b)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


@pytest.mark.parametrize("method", METHODS)
def test_ddp_loss_and_gradients_equal_one_process_on_the_whole_batch(method: str, distributed: list[dict]):
    model = _method(method)
    loss = model.compute_losses({"views": random_views(method, BATCH)})["loss"]
    loss.backward()
    ranks = [d[method] for d in distributed]
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ranks[0]["gradient"], ranks[1]["gradient"])  # DDP's view: one gradient
    expected = _gradient(model)
    assert float((ranks[0]["gradient"] - expected).norm() / expected.norm()) < 1e-4
    if ranks[0]["queue"] is not None:  # MoCo: every process enqueued every process's keys
        torch.testing.assert_close(ranks[0]["queue"], ranks[1]["queue"])
        torch.testing.assert_close(ranks[0]["queue"], _queue(model), rtol=1e-4, atol=1e-5)


def test_lightly_barlow_twins_gather_is_not_the_whole_batch_loss(distributed: list[dict]):
    """Why barlow_twins gathers the projections itself: lightly's gather_distributed
    standardises each process's half on its own, which is not the one-process loss."""
    from lightly.loss import BarlowTwinsLoss

    z = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(5))
    whole = BarlowTwinsLoss()(z, z.flip(0))
    lightly_loss = torch.stack([d["lightly_barlow"] for d in distributed]).mean()
    assert not torch.allclose(lightly_loss, whole, rtol=1e-3)
