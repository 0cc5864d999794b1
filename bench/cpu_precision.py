"""fp32 vs bf16-mixed autocast vs channels-last: a ResNet-18 SimCLR training step on CPU.

All variants live in ONE process and are timed in interleaved rounds (the order rotates
each round), so that load from other work on a shared machine hits each of them alike.
A step is what a SimCLR step of `sslmed run` computes: two views of a batch through the
backbone (sslmed's ``ResNetBackbone``, 1 channel) and the projection head, NT-Xent
loss, backward, AdamW. The data pipeline is left out (its cost does not depend on the
precision): the views are fixed tensors in memory. ``bf16`` is
``torch.autocast("cpu", torch.bfloat16)``, what Lightning's ``precision="bf16-mixed"``
runs on CPU; ``channels-last`` converts the model and the batch to
``torch.channels_last``.

    python bench/cpu_precision.py [--sizes 64 32] [--batch-size 128] [--rounds 5] [--steps 3]

Prints the median step time per variant and size and the ratio to fp32 (the median of
the per-round ratios); ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from sslmed.default_plugins.backbones import ResNetBackbone

VARIANTS = {
    "fp32": {"bf16": False, "channels_last": False},
    "bf16": {"bf16": True, "channels_last": False},
    "channels_last": {"bf16": False, "channels_last": True},
    "bf16+channels_last": {"bf16": True, "channels_last": True},
}


class Side:
    """One variant's model, optimiser and batch."""

    def __init__(self, name: str, image_size: int, batch_size: int) -> None:
        self.name = name
        self.bf16 = VARIANTS[name]["bf16"]
        self.channels_last = VARIANTS[name]["channels_last"]
        torch.manual_seed(0)
        backbone = ResNetBackbone("resnet18", in_channels=1)
        head = SimCLRProjectionHead(backbone.feature_dim, backbone.feature_dim, 128)
        self.model = torch.nn.Sequential(backbone, head)
        self.x = torch.randn(2 * batch_size, 1, image_size, image_size)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.criterion = NTXentLoss(temperature=0.1)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.model.train()

    def step(self) -> float:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with context:
            z0, z1 = self.model(self.x).float().chunk(2)
            loss = self.criterion(z0, z1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def time(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps."""
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - start) / steps


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    summary = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "sizes": {},
    }
    for size in args.sizes:
        sides = [Side(name, size, args.batch_size) for name in args.variants]
        for side in sides:
            for _ in range(args.warmup):
                side.step()
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for round_index in range(args.rounds):
            shift = round_index % len(sides)
            for side in sides[shift:] + sides[:shift]:
                times[side.name].append(side.time(args.steps))
            print(
                f"{size}px round {round_index + 1}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()),
                flush=True,
            )
        base = times["fp32"] if "fp32" in times else None
        rows = {}
        for name, values in times.items():
            row = {"median_step_s": statistics.median(values), "step_s": values}
            row["images_per_s"] = args.batch_size / row["median_step_s"]
            if base is not None:
                ratios = [b / v for b, v in zip(base, values, strict=True)]
                row["speedup_vs_fp32_median"] = statistics.median(ratios)
                row["speedup_vs_fp32"] = ratios
            rows[name] = row
        summary["sizes"][str(size)] = rows
    summary["load_average_end"] = os.getloadavg()
    summary["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
