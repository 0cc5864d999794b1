"""CRSM speed, side by side in one run, printed as ratios against their targets.

1. CRSM training-step time vs SimCLR step time (same backbone, batch, device): target <= 1.3x.
2. MDRE per-image cost vs torchvision RandomErasing (both at p=1, on real normalised
   views): target <= 1.2x; also shown as a share of the whole per-image view pipeline.
3. Data-loading throughput (real covid3 images through the full CRSM view pipeline,
   --num-workers processes) vs training throughput (images per second of CRSM steps):
   loading must not be the bottleneck (ratio >= 1).

    .venv/bin/python bench/crsm_speed.py                       # CPU, small
    .venv/bin/python bench/crsm_speed.py --device cuda --image-size 64 --batch-size 256 \
        --num-workers 14 --precision bf16 --steps 30

Timings interleave the two contenders round by round and report medians, so a noisy,
shared machine biases both alike. Results go to stdout (and --json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sslmed.core.plugins import get_registry  # noqa: E402
from sslmed.core.recipe import StepSettings  # noqa: E402
from sslmed.data.readers import ImageDataset
from sslmed.data.roots import resolve_data_root  # noqa: E402
from sslmed.training.engine import build_method  # noqa: E402
from sslmed.training.transforms import build_view_pipeline, image_mode  # noqa: E402

MDRE = {"name": "mdre", "p": 0.5, "min_count": 3, "max_count": 8, "min_area": 0.005, "max_area": 0.04}
COVID3 = {"name": "csv", "path": "covid3", "patient_column": "patient_id"}


def step_settings(objective: dict, args: argparse.Namespace) -> StepSettings:
    return StepSettings.model_validate(
        {
            "name": "bench",
            "data": "covid3",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "backbone": {"name": args.arch, "small_input": args.image_size <= 64},
            "objective": objective,
            "augmentations": [{"name": "simclr", "min_scale": 0.3}, MDRE],
        }
    )


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(
    methods: dict, batches: list, device: torch.device, steps: int, warmup: int, precision: str
) -> dict[str, float]:
    """Median seconds of one optimiser step (forward, backward, update) per method."""
    optimisers = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    dtype = torch.bfloat16 if precision == "bf16" else None
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        for name, method in methods.items():  # interleaved: A, B, A, B ...
            synchronise(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = method.compute_losses(batch)["loss"]
            optimisers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimisers[name].step()
            synchronise(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def time_per_image(functions: dict, images: list, rounds: int) -> dict[str, float]:
    """Median seconds per image of each function, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for image in images:
                function(image)
            times[name].append((time.perf_counter() - start) / len(images))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed optimiser steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes for the loading benchmark")
    parser.add_argument("--loader-batches", type=int, default=8)
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument(
        "--pin-memory",
        choices=["auto", "on", "off"],
        default="auto",
        help="pinned host memory in the loading benchmark (auto: on with a GPU, as the engine does)",
    )
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(0)
    registry = get_registry()
    source = registry.build(
        "dataset", COVID3, data_root=Path(args.data_root) if args.data_root else resolve_data_root()
    )
    records = source.records("train")
    crsm_step = step_settings({"name": "crsm", "temperature": 0.2}, args)
    pipeline = build_view_pipeline([a.spec() for a in crsm_step.augmentations], registry, args.image_size, 1)
    dataset = ImageDataset(source, records, pipeline, mode=image_mode(1))

    # 1. step time: the same real batches for both methods
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers, drop_last=True
    )
    batches = []
    for views, _labels in loader:
        batches.append({k: [t.to(device, non_blocking=True) for t in v] for k, v in views.items()})
        if len(batches) == 4:
            break
    methods = {
        "simclr": build_method(step_settings({"name": "simclr", "temperature": 0.2}, args), registry)
        .to(device)
        .train(),
        "crsm": build_method(crsm_step, registry).to(device).train(),
    }
    step_time = time_steps(methods, batches, device, args.steps, args.warmup, args.precision)

    # 2. erasing cost per image, on real normalised views
    views = [dataset[i][0]["clean"][0] for i in range(64)]
    erasers = {
        "mdre": registry.build("augmentation", {**MDRE, "p": 1.0}),
        "random_erasing": registry.build("augmentation", {"name": "random_erasing", "p": 1.0}),
    }
    erase_time = time_per_image(erasers, views, rounds=15)
    images = [source.read(r.ref, "L") for r in records[:32]]
    views_only = build_view_pipeline([{"name": "simclr", "min_scale": 0.3}], registry, args.image_size, 1)
    pipeline_time = time_per_image({"views": views_only}, images, rounds=3)["views"]
    # what one loader process spends per image (decode + views + MDRE), measured in this process
    item_time = time_per_image({"item": dataset.__getitem__}, list(range(64)), rounds=3)["item"]

    # 3. loading throughput (full pipeline, workers) vs training throughput
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
        drop_last=True,
        persistent_workers=False,
        pin_memory=device.type == "cuda" if args.pin_memory == "auto" else args.pin_memory == "on",
    )
    iterator = iter(loader)
    next(iterator)  # start-up of the workers is not throughput
    start, loaded = time.perf_counter(), 0
    for _ in range(args.loader_batches):
        try:
            views_batch, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            views_batch, _ = next(iterator)
        loaded += views_batch["views"][0].shape[0]
    loading = loaded / (time.perf_counter() - start)
    training = args.batch_size / step_time["crsm"]

    result = {
        "machine": {
            "host": platform.node(),
            "device": torch.cuda.get_device_name(0)
            if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__,
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "step_seconds": step_time,
        "crsm_over_simclr": step_time["crsm"] / step_time["simclr"],
        "erasing_us_per_image": {k: v * 1e6 for k, v in erase_time.items()},
        "views_pipeline_us_per_image": pipeline_time * 1e6,
        "mdre_over_random_erasing": erase_time["mdre"] / erase_time["random_erasing"],
        "loader_item_us_in_process": item_time * 1e6,
        "loading_expected_images_per_s": max(1, args.num_workers) / item_time,
        "loading_images_per_s": loading,
        "training_images_per_s": training,
        "loading_over_training": loading / training,
    }
    verdict = lambda ok: "OK" if ok else "MISSED"  # noqa: E731
    print(
        f"machine: {result['machine']['device']}, torch {torch.__version__}; {args.arch}, "
        f"{args.image_size}px, batch {args.batch_size}, precision {args.precision}"
    )
    print(
        f"CRSM step {step_time['crsm'] * 1e3:.1f} ms vs SimCLR step {step_time['simclr'] * 1e3:.1f} ms: "
        f"ratio {result['crsm_over_simclr']:.2f}x (target <= 1.30x) {verdict(result['crsm_over_simclr'] <= 1.3)}"
    )
    print(
        f"MDRE {erase_time['mdre'] * 1e6:.0f} us/image vs RandomErasing "
        f"{erase_time['random_erasing'] * 1e6:.0f} us/image: "
        f"ratio {result['mdre_over_random_erasing']:.2f}x (target <= 1.20x) "
        f"{verdict(result['mdre_over_random_erasing'] <= 1.2)}; "
        f"MDRE is {erase_time['mdre'] / pipeline_time:.1%} of the {pipeline_time * 1e6:.0f} us SimCLR views of an image"
    )
    print(
        f"loading {loading:.0f} images/s ({args.num_workers} workers) vs training {training:.0f} images/s: "
        f"ratio {result['loading_over_training']:.2f} (target >= 1) {verdict(result['loading_over_training'] >= 1)}; "
        f"one image costs {item_time * 1e3:.2f} ms in-process (decode + views + MDRE), so "
        f"{max(1, args.num_workers)} workers "
        f"could give {result['loading_expected_images_per_s']:.0f} images/s (a big gap points at "
        "inter-process transfer or pinned memory; try --pin-memory off)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
