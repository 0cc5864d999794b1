"""Images per second of sslmed's one image loader on the real covid3 PNGs.

What is timed is what evaluation and predict do for every image: decode the file with
:func:`sslmed.data.imaging.load_image` (8-bit grey), then the evaluation transform
(resize to SIZE², to float, normalise). Three ways:

* ``single``: a plain loop in this process;
* ``loader w0``: a torch ``DataLoader`` over :class:`sslmed.data.readers.ImageDataset`, no workers;
* ``loader w2``: the same with 2 worker processes.

Also the once-per-source decode check (:func:`sslmed.data.verify.verify_source`).

    .venv/bin/python bench/loader.py                 # all of covid3 (1,123 images)
    .venv/bin/python bench/loader.py --limit 300 --sizes 64

Results go to stdout as a Markdown table (for docs/benchmarks.md); note the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from sslmed.data.imaging import load_image
from sslmed.data.readers import ImageDataset
from sslmed.data.verify import verify_source
from sslmed.default_plugins.datasets import CsvArgs, build_csv
from sslmed.training.transforms import eval_transform

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def time_single(source, records, size: int) -> float:
    transform = eval_transform(size, 1)
    started = time.perf_counter()
    for record in records:
        transform(load_image(source.root / record.ref, "L"))
    return len(records) / (time.perf_counter() - started)


def time_loader(source, records, size: int, workers: int, batch_size: int = 64) -> float:
    dataset = ImageDataset(source, records, eval_transform(size, 1), mode="L")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    started = time.perf_counter()  # includes starting the workers, as a real epoch does
    seen = sum(len(images) for images, _labels in loader)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder (holding covid3/)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64], help="output sizes to time")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    args = parser.parse_args()
    if not (args.data / "covid3").is_dir():
        raise SystemExit(f"covid3 not found under {args.data} (see ../shared/data/README.md)")
    torch.set_num_threads(1)
    source = build_csv(CsvArgs(path="covid3", verify=False, test_size=0, val_size=0), data_root=args.data)
    records = source.records("train")[: args.limit or None]
    source.splits = {"train": records}
    for record in records[:32]:  # warm the page cache so the first mode does not pay for the disk
        load_image(source.root / record.ref)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s) visible, "
        f"torch {torch.__version__}, {len(records)} covid3 PNGs (8-bit grey, ~256 px)"
    )
    started = time.perf_counter()
    verify_source(source, "error")
    verify_rate = len(records) / (time.perf_counter() - started)
    print(f"decode check (verify_source, thread pool): {verify_rate:.0f} images/s\n")
    print("| size | single process | " + " | ".join(f"DataLoader, {w} workers" for w in args.workers) + " |")
    print("|---|---|" + "---|" * len(args.workers))
    for size in args.sizes:
        cells = [f"{time_single(source, records, size):.0f}"]
        cells += [f"{time_loader(source, records, size, workers):.0f}" for workers in args.workers]
        print(f"| {size} | " + " | ".join(cells) + " |")
    print("\n(images/s: decode + resize + normalise)")


if __name__ == "__main__":
    main()
