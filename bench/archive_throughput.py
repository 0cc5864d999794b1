"""Images per second of ``sslmed predict RUN DIR --out`` and ``sslmed embed`` on real images.

A ResNet-18 classifier export (random weights; 1 channel; temperature and OOD score)
at ``--size`` px runs over the first N real radiographs of a folder (default: kermany,
224 px JPEG; the decode, resize and model of every image), written to a temporary CSV /
.npy; each setting is run ``--rounds`` times and its median reported, with the peak
resident memory of the process.

    .venv/bin/python bench/archive_throughput.py --images 300 --workers 0 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from serve_load import export_resnet18

from sslmed.serving.batch_predict import embed_archive, predict_archive
from sslmed.serving.predict import Predictor

DATA = Path(os.environ.get("SSLMED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DATA / "kermany" / "images")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sslmed-archive-bench-"))
    archive = work / "archive"
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    for i, path in enumerate(files[: args.images]):
        (archive / str(i % 10)).mkdir(parents=True, exist_ok=True)
        os.symlink(path, archive / str(i % 10) / f"{i}{path.suffix}")
    model = export_resnet18(work / "model", args.size, trust=True)
    predictor = Predictor(model, device="cpu")
    print(
        f"{datetime.date.today()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch threads "
        f"{torch.get_num_threads()}; {args.images} images of {args.folder}, ResNet-18 at {args.size} px, "
        f"batch {args.batch_size}"
    )
    print("| command | workers | images/s (median; per round) |")
    print("|---|---|---|")
    for name, run, out in (("predict --out", predict_archive, "p.csv"), ("embed --out", embed_archive, "e.npy")):
        for workers in args.workers:
            rates = []
            for _ in range(args.rounds):
                target = work / out
                target.unlink(missing_ok=True)
                start = time.perf_counter()
                run(predictor, archive, target, batch_size=args.batch_size, workers=workers, progress=False)
                rates.append(args.images / (time.perf_counter() - start))
            spread = ", ".join(f"{r:.1f}" for r in rates)
            print(f"| {name} | {workers} | **{statistics.median(rates):.1f}** ({spread}) |")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
