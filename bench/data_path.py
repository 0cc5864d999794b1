"""The data path at scale: does the loader keep up with the training step?

Side by side in one process, alternating, ``--rounds`` times (median reported):

* ``loader (cache, cpu aug)``: images/s out of a DataLoader over the decode-once cache
  of ``cxr_corpus`` making SimCLR + MDRE views per image in ``--workers`` workers;
* ``loader (files, cpu aug)``: the same from the JPEG files (no cache);
* ``loader (cache, uint8)`` + ``device aug``: the uint8 batches for augmentation on
  the device, and the batched augmentation itself on ``--device``;
* ``train step``: the SimCLR training step (forward, backward, AdamW) of the recipe's
  ResNet-18 on in-memory tensors, images/s.

The ratio loader / train step must be >= 2 for the loader never to be the bottleneck.
``--rss`` instead runs ``sslmed run`` on the corpus recipe for a few steps and samples
the summed resident and proportional set size (RSS, PSS) of the whole process tree
(main process + loader workers) every 0.2 s.

    python bench/data_path.py [--device cpu|cuda] [--image-size 64] [--batch-size 128] [--workers 2]
    python bench/data_path.py --rss [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sslmed.core.plugins import get_registry
from sslmed.data.cache import CachedImageDataset, ensure_cache
from sslmed.data.readers import ImageDataset
from sslmed.data.roots import resolve_data_root
from sslmed.default_plugins.backbones import ResNetBackbone
from sslmed.default_plugins.datasets import CsvArgs, build_csv
from sslmed.default_plugins.simclr import SimCLRArgs, SimCLRMethod
from sslmed.training.transforms import build_batched_pipeline, build_view_pipeline

REPO = Path(__file__).resolve().parents[1]
AUGMENTATIONS = [{"name": "simclr", "min_scale": 0.3}, {"name": "mdre", "p": 0.5}]


def corpus():
    return build_csv(CsvArgs(path="cxr_corpus", verify=False, test_size=0, val_size=0), data_root=resolve_data_root())


def loader_rate(dataset, args, batches: int) -> float:
    """Images/s over ``batches`` batches, after the first (worker start-up) one."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * args.batch_size / (time.perf_counter() - start)
    del iterator
    return rate


def device_aug_rate(pipeline, args, batches: int) -> float:
    device = torch.device(args.device)
    images = torch.randint(0, 256, (args.batch_size, 1, args.image_size, args.image_size), dtype=torch.uint8)
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    pipeline(images, generator)
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        pipeline(images, generator)
    sync(device)
    return batches * args.batch_size / (time.perf_counter() - start)


def train_rate(method, optimizer, args, steps: int) -> float:
    device = torch.device(args.device)
    views = [torch.randn(args.batch_size, 1, args.image_size, args.image_size, device=device) for _ in range(2)]
    if args.channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    compute = torch.compile(method.compute_losses) if args.compile else method.compute_losses

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = compute({"views": views})["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rates(args) -> None:
    registry = get_registry()
    source = corpus()
    records = source.records("train")
    started = time.perf_counter()
    cache = ensure_cache(source, args.image_size, 1)
    warm_open = time.perf_counter() - started
    views = build_view_pipeline(AUGMENTATIONS, registry, args.image_size, 1)
    batched = build_batched_pipeline(AUGMENTATIONS, registry, args.image_size, 1)
    sides = {
        "loader (cache, cpu aug)": lambda: loader_rate(CachedImageDataset(cache, records, views), args, args.batches),
        "loader (files, cpu aug)": lambda: loader_rate(ImageDataset(source, records, views), args, args.batches),
        "loader (cache, uint8)": lambda: loader_rate(
            CachedImageDataset(cache, records, as_tensor=True), args, args.batches
        ),
        "device aug": lambda: device_aug_rate(batched, args, args.batches),
    }
    torch.manual_seed(0)
    method = SimCLRMethod(ResNetBackbone("resnet18", in_channels=1, small_input=False), SimCLRArgs(temperature=0.2))
    method = method.to(args.device).train()
    if args.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3, fused=args.fused or None)
    sides["train step"] = lambda: train_rate(method, optimizer, args, args.steps)
    found: dict[str, list[float]] = {name: [] for name in sides}
    for round_index in range(args.rounds):
        names = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in names:
            found[name].append(sides[name]())
        print(json.dumps({"round": round_index, **{k: round(v[-1], 1) for k, v in found.items()}}), flush=True)
    median = {name: statistics.median(values) for name, values in found.items()}
    train = median["train step"]
    print(
        json.dumps(
            {
                "machine": platform.node(),
                "device": args.device,
                "load": open("/proc/loadavg").read().split()[:3],
                "settings": vars(args),
                "cache_open_seconds_warm": round(warm_open, 3),
                "median_images_per_s": {k: round(v, 1) for k, v in median.items()},
                "loader_over_train": {k: round(v / train, 2) for k, v in median.items() if k != "train step"},
            },
            indent=1,
        )
    )


def profile(args) -> None:
    """torch.profiler over ``--batches`` steps of the whole data path: cached uint8 batches,
    transfer, batched augmentation, training step. Writes the table and a Chrome trace."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    device = torch.device(args.device)
    source = corpus()
    cache = ensure_cache(source, args.image_size, 1)
    dataset = CachedImageDataset(cache, source.records("train"), as_tensor=True)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True, pin_memory=True
    )
    pipeline = build_batched_pipeline(AUGMENTATIONS, get_registry(), args.image_size, 1)
    method = SimCLRMethod(ResNetBackbone("resnet18", in_channels=1, small_input=False), SimCLRArgs(temperature=0.2))
    method = method.to(device).train()
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    generator = torch.Generator(device=device).manual_seed(0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batches = iter(loader)
    next(batches)
    args.profile.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(args.batches):
            images, _labels = next(batches)
            views = pipeline(images.to(device, non_blocking=True), generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                loss = method.compute_losses(views)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
    seconds = time.perf_counter() - started
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30)
    (args.profile / "profile.txt").write_text(
        f"{args.batches} steps of batch {args.batch_size} at {args.image_size}px in {seconds:.2f}s "
        f"({args.batches * args.batch_size / seconds:.0f} img/s, profiler on)\n\n{table}\n"
    )
    prof.export_chrome_trace(str(args.profile / "trace.json"))
    print(table)


def tree_memory(pid: int) -> tuple[int, int]:
    """Summed RSS and PSS (bytes) of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    todo, rss, pss = [pid], 0, 0
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in open(f"/proc/{current}/smaps_rollup"):
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def peak_memory(args) -> None:
    command = [
        str(Path(sys.executable).with_name("sslmed")),
        "-q",
        "run",
        str(REPO / "recipes" / "simclr_multistep.yaml"),
        "--runs-dir",
        args.runs_dir,
        "--set",
        f"steps.0.max_steps={args.steps}",
        "--set",
        "steps.1.max_steps=1",
        "--set",
        f"defaults.num_workers={args.workers}",
        "--set",
        "evaluation.baselines=[]",
        "--set",
        "evaluation.probes=[linear]",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while process.poll() is None:
        rss, pss = tree_memory(process.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    print(
        json.dumps(
            {
                "returncode": process.returncode,
                "stderr_tail": process.stderr.read()[-500:] if process.returncode else "",
                "seconds": round(time.perf_counter() - started, 1),
                "peak_rss_gib": round(peak_rss / 2**30, 2),
                "peak_pss_gib": round(peak_pss / 2**30, 2),
                "workers": args.workers,
                "load": open("/proc/loadavg").read().split()[:3],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8, help="batches per loader measurement")
    parser.add_argument("--steps", type=int, default=3, help="training steps per measurement (--rss: corpus steps)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rss", action="store_true", help="peak memory of a corpus run instead")
    parser.add_argument("--profile", type=Path, help="profile --batches steps of loader + device aug + step into DIR")
    parser.add_argument("--bf16", action="store_true", help="train step under bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="train step in channels-last memory format")
    parser.add_argument("--compile", action="store_true", help="train step through torch.compile")
    parser.add_argument("--fused", action="store_true", help="fused AdamW")
    parser.add_argument("--runs-dir", default="/tmp/sslmed-bench-runs")
    args = parser.parse_args()
    if args.rss:
        peak_memory(args)
    elif args.profile:
        profile(args)
    else:
        rates(args)


if __name__ == "__main__":
    main()
