"""sslmed's SimCLR training step vs a minimal hand-written lightly + torch loop.

Same backbone, batch size, image size, augmentations and data (PneumoniaMNIST train
images, in memory); each side runs ``--steps`` optimiser steps after ``--warmup``
steps, alternating sides ``--rounds`` times so that noise from a shared machine hits
both. Prints images/s per side and the ratio sslmed / hand-written (target >= 0.97).

    python bench/throughput.py [--device cpu|cuda] [--image-size 64] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image

from sslmed.core.plugins import get_registry
from sslmed.core.recipe import StepSettings
from sslmed.data.readers import ArrayReader, ImageDataset
from sslmed.data.roots import resolve_data_root
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.default_plugins.backbones import ResNetBackbone
from sslmed.training.engine import build_method, make_trainer
from sslmed.training.transforms import build_view_pipeline, normalize_values

DATA = resolve_data_root() / "pneumoniamnist" / "pneumoniamnist.npz"


class StepTimer(L.Callback):
    """Wall time of the optimiser steps after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.end = 0.0

    def on_train_batch_start(self, trainer, module, batch, index):
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, index):
        if trainer.global_step == trainer.max_steps:  # the last step, before any checkpoint is written
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.end = time.perf_counter()


def make_source(images: np.ndarray) -> ImageSource:
    records = [ImageRecord(i, 0) for i in range(len(images))]
    return ImageSource("pneumoniamnist", ["x"], {"train": records}, ArrayReader(images))


def sslmed_side(args, source: ImageSource, step: StepSettings, tmp: Path) -> float:
    registry = get_registry()
    L.seed_everything(0, verbose=False)
    method = build_method(step, registry)
    pipeline = build_view_pipeline([a.spec() for a in step.augmentations], registry, step.image_size, step.in_channels)
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, source.records("train"), pipeline),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=args.device == "cuda",
    )
    trainer = make_trainer(step, tmp, progress=False)
    timer = StepTimer(args.warmup)
    trainer.callbacks.append(timer)
    trainer.fit(method, loader)
    return args.steps * args.batch_size / (timer.end - timer.start)


def handwritten_side(args, images: np.ndarray) -> float:
    """The loop a lightly user would write by hand (lightly's examples/pytorch/simclr.py style)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    backbone = ResNetBackbone("resnet18", in_channels=1, small_input=args.small_input)
    head = SimCLRProjectionHead(backbone.feature_dim, backbone.feature_dim, 128)
    model = torch.nn.Sequential(backbone, head).to(device)
    criterion = NTXentLoss(temperature=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    transform = SimCLRTransform(
        input_size=args.image_size,
        min_scale=0.2,
        cj_strength=0.5,
        cj_sat=0.0,
        cj_hue=0.0,
        random_gray_scale=0.0,
        gaussian_blur=0.0,
        normalize=normalize_values(1),
    )

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return transform(Image.fromarray(images[i]).convert("L"))

    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=args.device == "cuda",
    )
    model.train()
    done, start = 0, 0.0
    while done < args.warmup + args.steps:
        for x0, x1 in loader:
            if done == args.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            x = torch.cat([x0, x1]).to(device, non_blocking=True)
            z0, z1 = model(x).chunk(2)
            loss = criterion(z0, z1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == args.warmup + args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--small-input", action="store_true", help="3x3 stem for small images")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    images = np.load(DATA)["train_images"]
    source = make_source(images)
    step = StepSettings.model_validate(
        {
            "name": "bench",
            "data": "x",
            "backbone": {"name": "resnet18", "small_input": args.small_input},
            "objective": {"name": "simclr", "temperature": 0.2},
            "augmentations": [{"name": "simclr", "min_scale": 0.2}],
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "max_steps": args.warmup + args.steps,
            "epochs": 1000,
            "accelerator": "gpu" if args.device == "cuda" else "cpu",
            "devices": 1,
            "optimizer": {"name": "adamw", "lr": 1e-3},
            "schedule": {"name": "constant"},
            "checkpoint_every_n_steps": None,
            "log_every_n_steps": 50,
        }
    )
    import tempfile

    results = {"sslmed": [], "handwritten": []}
    for round_index in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            results["sslmed"].append(sslmed_side(args, source, step, Path(tmp)))
        results["handwritten"].append(handwritten_side(args, images))
        print(
            f"round {round_index + 1}: sslmed {results['sslmed'][-1]:.1f} img/s, "
            f"hand-written {results['handwritten'][-1]:.1f} img/s",
            flush=True,
        )
    ratios = [a / b for a, b in zip(results["sslmed"], results["handwritten"], strict=False)]
    summary = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "sslmed_img_s": statistics.median(results["sslmed"]),
        "handwritten_img_s": statistics.median(results["handwritten"]),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
