"""One pre-training step on Lightning: data, method, trainer, checkpoints, export.

The Trainer owns devices, DDP, precision, checkpointing and the progress bar. When
the step finishes, global rank 0 exports the backbone as safetensors for
``init_from``, evaluation and predict.

Checkpoints and resume: a checkpoint is written at the end of every epoch
(``checkpoints/epoch<E>-step<S>.ckpt``, the newest two kept, and ``last.ckpt``, a
link to the newest), each through a temporary file in the same folder and a rename,
so a kill never leaves a truncated one. Every epoch starts from a seed derived from the step's seed and the
epoch number, so an interrupted step resumed from the newest epoch checkpoint that
loads repeats exactly what an uninterrupted run would have done (same data order,
same augmentations, same weights on the same CPU). Work since the last completed
epoch is redone. Checkpoints are loaded with ``weights_only=True``. Once the step is
exported its checkpoints have no further use and are deleted (``keep_checkpoints``).

A SIGTERM (a scheduler's stop) or Ctrl-C during training ends the step at the next
batch without marking it done and raises :class:`RunInterrupted`.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import pickle
import shutil
import signal
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslmed.artifacts.exports import load_backbone_weights, save_backbone, save_tensors
from sslmed.artifacts.rundir import LOGS, StepDir
from sslmed.core.errors import CheckpointError, RunInterrupted, TrainingDiverged, UsageError
from sslmed.core.files import atomic_target, remove_partial_files
from sslmed.core.recipe import StepSettings
from sslmed.core.registry import Registry
from sslmed.data.cache import CachedImageDataset, DecodedImageDataset, ImageCache, cache_root, ensure_cache, wants_cache
from sslmed.data.readers import ImageDataset
from sslmed.data.sources import ImageSource
from sslmed.training.methods import SSLMethod
from sslmed.training.precision import resolve_precision
from sslmed.training.transforms import BatchedViewPipeline, build_batched_pipeline, build_view_pipeline, image_mode

log = logging.getLogger(__name__)


def backbone_identity(step: StepSettings) -> dict[str, Any]:
    """What an exported backbone must match to be loaded into ``step``'s backbone."""
    return {"backbone": step.backbone.spec(), "in_channels": step.in_channels}


def build_method(step: StepSettings, registry: Registry) -> SSLMethod:
    """The step's backbone and objective, built through the registry, with the step's
    reconstruction added when it has one (its decoder built before the objective's heads,
    as ``crsm`` builds its own: the same seed gives the same initial weights)."""
    backbone = registry.build("backbone", step.backbone.spec(), in_channels=step.in_channels)
    decoder = None
    if step.reconstruction is not None:
        decoder = registry.build(
            "decoder",
            step.reconstruction.decoder.spec(),
            backbone=backbone,
            image_size=step.image_size,
            out_channels=step.in_channels,
        )
        if not isinstance(decoder, torch.nn.Module):
            raise UsageError(f"step {step.name!r}: decoder {step.reconstruction.decoder.name!r} is not a torch module")
    method = registry.build(
        "objective",
        step.objective.spec(),
        backbone=backbone,
        build=registry.build,
        image_size=step.image_size,
        in_channels=step.in_channels,
    )
    if not isinstance(method, SSLMethod):
        raise UsageError(f"objective {step.objective.name!r} did not return an sslmed.training.methods.SSLMethod")
    if decoder is not None and step.reconstruction is not None:  # built above only with a reconstruction
        if "decoder" in method.extra_exports():
            raise UsageError(
                f"step {step.name!r}: objective {step.objective.name!r} has a decoder of its own; "
                "drop the step's reconstruction (or use its base objective, e.g. simclr for crsm)"
            )
        method.add_reconstruction(decoder, step.reconstruction, step.image_size, step.in_channels)
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
        assert pipeline is not None  # built above when the views are made in the workers
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a half-written file under the final name.

    Lightning's own IO writes through fsspec, whose "move" from the system temporary
    folder is a copy straight into the target when that folder is on another file
    system. Here the checkpoint goes to a temporary file beside the target, is flushed
    to disk, and renamed over it. Loading never unpickles code (``weights_only=True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with atomic_target(Path(path), fsync=True) as temp, open(temp, "wb") as out:
            torch.save(checkpoint, out)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(Path(path))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without running any code from it; a file that is not
    a complete checkpoint is a :class:`CheckpointError` naming it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (refused by the safe loader, weights_only=True: it is corrupt "
            "or holds objects other than tensors and plain values)"
        ) from None
    except Exception as exc:  # a truncated zip archive, ...
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict or loops)")
    return checkpoint


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed an epoch starts from: a function of the step's seed and the epoch only."""
    return zlib.crc32(f"{seed}:{epoch}".encode()) & 0x7FFFFFFF


class EpochSeed(Callback):
    """Seed every epoch from ``(seed, epoch)``, so that resuming at an epoch boundary
    draws the same data order and augmentations as an uninterrupted run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seeded_epoch: int | None = None

    def seed_epoch(self, epoch: int) -> None:
        """Seed ``epoch`` now: before ``fit`` (the first epoch's batches are fetched early)."""
        L.seed_everything(epoch_seed(self.seed, epoch), workers=True, verbose=False)
        self.seeded_epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch != self.seeded_epoch:
            self.seed_epoch(trainer.current_epoch)


def export_meta(
    step: StepSettings, method: SSLMethod, epochs: int, global_step: int, world_size: int
) -> dict[str, Any]:
    """What ``backbone.json`` says of an export: the backbone's identity and how far it trained."""
    return {
        **backbone_identity(step),
        "step": step.name,
        "image_size": step.image_size,
        "objective": step.objective.spec(),
        "epochs": epochs,
        "global_step": global_step,
        "world_size": world_size,
        "exported_backbone": method.exported_backbone,
        "precision": resolve_precision(step.precision, step.accelerator),
    }


class BackboneSnapshots(Callback):
    """Export the backbone at the end of every ``every``-th epoch to ``snapshots/epoch<E>/``.

    Each snapshot is a complete backbone export (what ``init_from`` and evaluation read),
    written atomically, so probing them gives accuracy against images seen without
    keeping Lightning checkpoints (which hold optimiser state, and only the newest two).
    A resumed step writes the snapshots of the epochs it redoes again, with the same
    weights, since resume is exact."""

    def __init__(self, step: StepSettings, directory: Path, every: int) -> None:
        self.step, self.directory, self.every = step, directory, every

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every or not trainer.is_global_zero:
            return
        method = cast(SSLMethod, pl_module)
        meta = export_meta(self.step, method, epoch, trainer.global_step, trainer.world_size)
        save_backbone(StepDir(self.directory).snapshot(epoch), method.export_backbone(), meta)


def make_trainer(step: StepSettings, directory: Path, progress: bool = True) -> L.Trainer:
    """A Lightning Trainer configured from the step's settings."""
    checkpoints = ModelCheckpoint(
        dirpath=StepDir(directory).checkpoints,
        filename="epoch{epoch:03d}-step{step:06d}",
        auto_insert_metric_name=False,  # not "epochepoch=0-stepstep=3"
        monitor="step",
        mode="max",
        save_top_k=2,  # the newest two: one to fall back on
        save_last="link",  # a relative symlink to the newest, not a second copy of it
        enable_version_counter=False,  # a resumed step overwrites last.ckpt, never adds last-v1.ckpt
        every_n_epochs=1,
        save_on_train_epoch_end=True,
    )
    return L.Trainer(
        max_epochs=step.epochs,
        max_steps=step.max_steps,
        accelerator=step.accelerator,
        devices=step.devices,
        strategy=step.strategy,
        num_nodes=step.num_nodes,
        # the recipe holds a string; Lightning checks the value
        precision=cast(Any, resolve_precision(step.precision, step.accelerator)),
        sync_batchnorm=step.sync_batchnorm,
        default_root_dir=directory,
        logger=CSVLogger(directory, name=LOGS, version=""),  # -> StepDir.metrics_csv
        callbacks=[checkpoints, EpochSeed(step.seed)]
        + ([BackboneSnapshots(step, directory, step.snapshot_every_n_epochs)] if step.snapshot_every_n_epochs else []),
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=step.log_every_n_steps,
        enable_model_summary=False,
        enable_progress_bar=progress and sys.stderr.isatty(),
        deterministic=False,
    )


def find_resume_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint of a step folder that loads, with its content.

    Leftover temporary files of a write that was killed are removed; checkpoints that do
    not load are skipped with a warning. None when there is none; a
    :class:`CheckpointError` when there are checkpoints but none loads.
    """
    step_dir = StepDir(directory)
    folder = step_dir.checkpoints
    if not folder.is_dir():
        return None
    for partial in remove_partial_files(folder):
        log.warning("removed %s: a checkpoint write that did not finish", partial)
    candidates = sorted(folder.glob("epoch*.ckpt"), reverse=True)  # zero-padded: newest first
    if step_dir.last_checkpoint.is_file():
        candidates.append(step_dir.last_checkpoint)
    problems = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            problems.append(str(exc))
    if problems:
        raise CheckpointError(
            f"no checkpoint in {folder} can be loaded ({problems[0]}); "
            f"delete {directory} to train step {directory.name!r} again from its start"
        )
    return None


def _keep_metrics_log(trainer: L.Trainer, directory: Path, epoch: int) -> None:
    """Keep the rows of ``logs/metrics.csv`` from the epochs before ``epoch`` when resuming.

    Lightning's CSV logger deletes the file when it starts; the rows of the completed
    epochs are written back at once (the epochs redone log theirs again), so the log of
    a resumed step reads like the log of an uninterrupted one.
    """
    path = StepDir(directory).metrics_csv
    if not trainer.is_global_zero or not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        keys = list(reader.fieldnames or [])
        rows = [row for row in reader if row.get("epoch") and int(float(row["epoch"])) < epoch]
    with warnings.catch_warnings():  # "previous log files ... will be deleted": kept here
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        writer = cast(CSVLogger, trainer.logger).experiment  # starting the writer removes the old file
    if rows:
        writer.metrics_keys = keys
        writer.metrics = rows
        writer.save()


@contextlib.contextmanager
def stopped_by_signal(what: str) -> Iterator[None]:
    """Turn Lightning's exits on SIGTERM (``SIGTERMException``, a ``SystemExit`` with status
    0) and after Ctrl-C (``sys.exit(1)``) into a :class:`RunInterrupted` naming ``what``."""
    try:
        yield
    except SystemExit as exc:
        if isinstance(exc, SIGTERMException):
            raise RunInterrupted(f"{what} was stopped by SIGTERM", int(signal.SIGTERM)) from None
        if isinstance(exc.__context__, KeyboardInterrupt):  # raised while handling Ctrl-C
            raise RunInterrupted(f"{what} was stopped by Ctrl-C", int(signal.SIGINT)) from None
        raise


def train_step(
    step: StepSettings,
    source: ImageSource,
    directory: Path,
    registry: Registry,
    init_from: Path | None = None,
    progress: bool = True,
) -> None:
    """Train one step (resuming from its newest loadable epoch checkpoint) and export it."""
    directory.mkdir(parents=True, exist_ok=True)
    for partial in remove_partial_files(directory):  # an export killed before its rename
        log.warning("removed %s: a write that did not finish", partial)
    L.seed_everything(step.seed, workers=True, verbose=False)
    method = build_method(step, registry)
    if init_from is not None:
        load_backbone_weights(init_from, method.backbone, expect=backbone_identity(step))
        method.backbone_initialised()  # momentum copies start from the loaded weights
        log.info("step %s: backbone initialised from %s", step.name, init_from)
    views = device_pipeline(step, registry)
    method.set_device_views(views, seed=step.seed)
    loader = make_loader(step, source, registry, cache=step_cache(step, source, progress), on_device=views is not None)
    trainer = make_trainer(step, directory, progress)
    found = find_resume_checkpoint(directory)
    epoch = 0
    if found:
        path, checkpoint = found
        epoch = int(checkpoint.get("epoch", 0)) + 1  # saved at the end of that epoch
        log.info(
            "step %s: resuming at the start of epoch %d from %s (step %s)",
            step.name,
            epoch,
            path.name,
            checkpoint.get("global_step"),
        )
        del checkpoint
    _keep_metrics_log(trainer, directory, epoch)
    # Lightning sets Trainer.callbacks in its callback connector without declaring it
    seeder = next(c for c in trainer.callbacks if isinstance(c, EpochSeed))  # type: ignore[attr-defined]
    seeder.seed_epoch(epoch)
    try:
        with stopped_by_signal(f"step {step.name!r}"):
            trainer.fit(method, loader, ckpt_path=str(found[0]) if found else None)
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"step {step.name!r}: {exc}") from None
    if trainer.is_global_zero:
        extras = method.extra_exports()
        for name, (module, _description) in extras.items():
            save_tensors(StepDir(directory).extra_weights(name), module.state_dict())
        save_backbone(
            directory,
            method.export_backbone(),
            {  # written last: marks the step done
                **export_meta(step, method, trainer.current_epoch, trainer.global_step, trainer.world_size),
                "extras": {name: description for name, (_module, description) in extras.items()},
            },
        )
        if not step.keep_checkpoints:  # they only ever resume this step, which is done
            shutil.rmtree(StepDir(directory).checkpoints, ignore_errors=True)
    if trainer.world_size > 1:
        trainer.strategy.barrier("sslmed-step-export")  # others wait for the export


#: rank variables of Lightning's launcher, torchrun (RANK, GROUP_RANK: the node) and SLURM
RANK_VARIABLES = ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK", "SLURM_PROCID")


def is_worker_process() -> bool:
    """True in every process but global rank 0: those Lightning's DDP launcher starts,
    and those a cluster launcher (torchrun on other nodes, srun) starts."""
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in RANK_VARIABLES)
