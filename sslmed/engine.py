"""One pre-training step on Lightning: data, method, trainer, checkpoints, export.

The Trainer owns devices, DDP, precision, checkpointing (``checkpoints/last.ckpt``,
from which an interrupted step resumes) and the progress bar. When the step
finishes, global rank 0 exports the backbone as safetensors for ``init_from``,
evaluation and predict.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from sslmed.cache import CachedImageDataset, DecodedImageDataset, ImageCache, cache_root, ensure_cache, wants_cache
from sslmed.checkpoints import load_backbone_weights, save_backbone, save_tensors
from sslmed.data import ImageDataset, ImageSource
from sslmed.errors import SslmedError, UsageError
from sslmed.methods import SSLMethod
from sslmed.recipe import StepSettings
from sslmed.registry import Registry
from sslmed.rundir import LOGS, StepDir
from sslmed.transforms import BatchedViewPipeline, build_batched_pipeline, build_view_pipeline, image_mode

log = logging.getLogger(__name__)


def backbone_identity(step: StepSettings) -> dict[str, Any]:
    """What an exported backbone must match to be loaded into ``step``'s backbone."""
    return {"backbone": step.backbone.spec(), "in_channels": step.in_channels}


def step_is_done(directory: Path) -> bool:
    """A step is done once its backbone export exists (written last, atomically)."""
    return StepDir(directory).is_done()


def build_method(step: StepSettings, registry: Registry) -> SSLMethod:
    """The step's backbone and objective, built through the registry."""
    backbone = registry.build("backbone", step.backbone.spec(), in_channels=step.in_channels)
    method = registry.build(
        "objective",
        step.objective.spec(),
        backbone=backbone,
        build=registry.build,
        image_size=step.image_size,
        in_channels=step.in_channels,
    )
    if not isinstance(method, SSLMethod):
        raise UsageError(f"objective {step.objective.name!r} did not return an sslmed.methods.SSLMethod")
    method.configure_training(step.optimizer, step.schedule)
    return method


def uses_gpu(step: StepSettings) -> bool:
    """Whether the step trains on a GPU (``accelerator: auto`` picks one when present)."""
    if step.accelerator in ("gpu", "cuda"):
        return True
    return step.accelerator == "auto" and torch.cuda.is_available()


def device_pipeline(step: StepSettings, registry: Registry) -> BatchedViewPipeline | None:
    """The batched augmentation pipeline when the step augments on the device, else None.

    ``augment_on: device`` needs a batched version of every augmentation (an error
    naming the one that lacks it); ``auto`` uses it on a GPU when it exists."""
    if step.augment_on == "cpu" or (step.augment_on == "auto" and not uses_gpu(step)):
        return None
    specs = [a.spec() for a in step.augmentations]
    pipeline = build_batched_pipeline(specs, registry, step.image_size, step.in_channels)
    if isinstance(pipeline, str):
        if step.augment_on == "device":
            raise UsageError(f"step {step.name!r}: augment_on: device is not possible: {pipeline} (use cpu or auto)")
        log.info("step %s: augmenting on the CPU: %s", step.name, pipeline)
        return None
    return pipeline


def step_cache(step: StepSettings, source: ImageSource, progress: bool = True) -> ImageCache | None:
    """The decode-once cache of the step's data, built if needed (None when off)."""
    if not wants_cache(step.cache, source, len(source.records(step.split))):
        return None
    root = cache_root(step.cache)
    return ensure_cache(source, step.image_size, step.in_channels, root, progress=progress and sys.stderr.isatty())


def make_loader(
    step: StepSettings,
    source: ImageSource,
    registry: Registry,
    cache: ImageCache | None = None,
    on_device: bool = False,
) -> torch.utils.data.DataLoader:
    """Shuffled loader over the step's split (the last partial batch dropped).

    Images come from ``cache`` when given, else from the files. ``on_device``: the
    loader yields uint8 batches at the training size and the method augments them on
    the device; otherwise the workers make the views image by image.
    """
    records = source.records(step.split)
    if len(records) < step.batch_size:
        raise UsageError(
            f"step {step.name!r}: batch_size {step.batch_size} is larger than its data "
            f"({len(records)} images in {source.name!r} split {step.split!r})"
        )
    pipeline = None
    if not on_device:
        pipeline = build_view_pipeline(
            [a.spec() for a in step.augmentations], registry, step.image_size, step.in_channels
        )
    if cache is not None:
        dataset: torch.utils.data.Dataset = CachedImageDataset(cache, records, pipeline, as_tensor=on_device)
    elif on_device:
        dataset = DecodedImageDataset(source, records, step.image_size, step.in_channels)
    else:
        dataset = ImageDataset(source, records, pipeline, mode=image_mode(step.in_channels))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=step.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=step.num_workers,
        persistent_workers=step.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def make_trainer(step: StepSettings, directory: Path, progress: bool = True) -> L.Trainer:
    """A Lightning Trainer configured from the step's settings."""
    checkpoints = ModelCheckpoint(
        dirpath=StepDir(directory).checkpoints,
        filename="epoch{epoch}-step{step}",
        save_last=True,
        save_top_k=1,
        every_n_train_steps=step.checkpoint_every_n_steps,
    )
    return L.Trainer(
        max_epochs=step.epochs,
        max_steps=step.max_steps,
        accelerator=step.accelerator,
        devices=step.devices,
        strategy=step.strategy,
        num_nodes=step.num_nodes,
        precision=step.precision,
        sync_batchnorm=step.sync_batchnorm,
        default_root_dir=directory,
        logger=CSVLogger(directory, name=LOGS, version=""),  # -> StepDir.metrics_csv
        callbacks=[checkpoints],
        log_every_n_steps=step.log_every_n_steps,
        enable_model_summary=False,
        enable_progress_bar=progress and sys.stderr.isatty(),
        deterministic=False,
    )


def train_step(
    step: StepSettings,
    source: ImageSource,
    directory: Path,
    registry: Registry,
    init_from: Path | None = None,
    progress: bool = True,
) -> None:
    """Train one step (resuming from ``checkpoints/last.ckpt`` if present) and export it."""
    directory.mkdir(parents=True, exist_ok=True)
    L.seed_everything(step.seed, workers=True, verbose=False)
    method = build_method(step, registry)
    if init_from is not None:
        load_backbone_weights(init_from, method.backbone, expect=backbone_identity(step))
        log.info("step %s: backbone initialised from %s", step.name, init_from)
    views = device_pipeline(step, registry)
    method.set_device_views(views, seed=step.seed)
    loader = make_loader(step, source, registry, cache=step_cache(step, source, progress), on_device=views is not None)
    trainer = make_trainer(step, directory, progress)
    last = StepDir(directory).last_checkpoint
    resume_from = str(last) if last.is_file() else None
    if resume_from:
        log.info("step %s: resuming from %s", step.name, last)
    trainer.fit(method, loader, ckpt_path=resume_from)
    if trainer.interrupted:  # never mark a step done that did not finish
        raise SslmedError(f"step {step.name!r} was interrupted; continue it with `sslmed run ... --resume`")
    if trainer.is_global_zero:
        extras = method.extra_exports()
        for name, (module, _description) in extras.items():
            save_tensors(StepDir(directory).extra_weights(name), module.state_dict())
        save_backbone(
            directory,
            method.backbone,
            {  # written last: marks the step done
                **backbone_identity(step),
                "step": step.name,
                "image_size": step.image_size,
                "objective": step.objective.spec(),
                "epochs": trainer.current_epoch,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "extras": {name: description for name, (_module, description) in extras.items()},
            },
        )
    if trainer.world_size > 1:
        trainer.strategy.barrier("sslmed-step-export")  # others wait for the export


#: rank variables of Lightning's launcher, torchrun (RANK, GROUP_RANK: the node) and SLURM
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "SLURM_PROCID")


def is_worker_process() -> bool:
    """True in every process but global rank 0: those Lightning's DDP launcher starts,
    and those a cluster launcher (torchrun on other nodes, srun) starts."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in RANK_VARIABLES)
