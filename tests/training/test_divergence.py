"""A step whose loss or gradients stop being finite stops there, with one line that says
where and the likely cause, instead of training on NaN weights to the end."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from methods_support import build, random_views

from sslmed.core.errors import TrainingDiverged


def fit(method, steps: int = 4, precision: str = "32-true") -> None:
    batches = [({"views": random_views("vicreg", seed=i)}, torch.zeros(8)) for i in range(steps)]
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(method, torch.utils.data.DataLoader(batches, batch_size=None))


def poisoned(method, at_step: int, where: str):
    """``method`` whose loss (``where="loss"``) or one gradient (``"gradient"``) is not finite
    from optimiser step ``at_step`` on."""
    compute = method.compute_losses

    def compute_losses(batch):
        losses = compute(batch)
        if method.global_step >= at_step:
            if where == "loss":
                losses["loss"] = losses["loss"] * float("nan")
            else:  # a finite loss whose gradient is infinite: d/dx sqrt(x) at 0
                losses["loss"] = losses["loss"] + torch.sqrt(method.backbone.blocks[0].weight.abs() * 0).sum()
        return losses

    method.compute_losses = compute_losses
    return method


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_training_stops_at_the_first_non_finite_step_with_the_weights_it_had(where: str):
    method = poisoned(build("vicreg"), at_step=2, where=where)
    snapshots = []
    method.on_train_batch_start = lambda batch, index: snapshots.append(method.backbone.blocks[0].weight.clone())
    with pytest.raises(TrainingDiverged, match="at optimiser step 2 .precision 32-true.") as error:
        fit(method)
    expected = "the loss is nan" if where == "loss" else "the gradient of backbone.blocks.0.weight is not finite"
    assert expected in str(error.value)
    assert "nothing of this step was exported" in str(error.value)
    assert len(snapshots) == 3  # steps 0, 1 trained; step 2 stopped before its optimiser step
    assert torch.isfinite(method.backbone.blocks[0].weight).all()
    assert torch.equal(method.backbone.blocks[0].weight, snapshots[-1])  # the bad step changed nothing


def test_a_finite_run_is_left_alone():
    method = build("vicreg")
    fit(method, steps=3)
    assert method.global_step == 3


def test_bf16_on_a_cpu_names_the_known_convolution_cause():
    method = poisoned(build("vicreg"), at_step=0, where="loss")
    with pytest.raises(TrainingDiverged, match="bf16 convolution gradients are wrong where a feature map is 1x1"):
        fit(method, precision="bf16-mixed")
