"""Latency of the classifier: PyTorch (the path ``sslmed predict`` takes) vs onnxruntime
(``sslmed export --format onnx``), side by side in one process.

A ResNet-18 classifier export (random weights: speed does not depend on them; 1 channel,
temperature, OOD score and input gate included, on both sides) is exported to ONNX; real covid3 radiographs are
preprocessed once; then each round times R calls of each side, alternating, on the same
batch, and keeps each side's median. The ratio is onnxruntime / PyTorch per round, the
reported one the median over rounds (>= 5). Both sides use the same number of threads.

    .venv/bin/python bench/onnx_latency.py                       # 224 px, batch 1 and 16
    .venv/bin/python bench/onnx_latency.py --size 64 --batch 1 32 --rounds 7
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from serve_load import export_resnet18

from sslmed.evaluation.ood import input_statistics
from sslmed.serving.hub_export import write_export
from sslmed.serving.onnx_export import OnnxPredictor
from sslmed.serving.predict import Predictor

DATA = Path(os.environ.get("SSLMED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="calls per side per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="sslmed-onnx-bench-"))
    model = export_resnet18(folder / "model", args.size, trust=True)
    write_export(model, folder / "export", ("safetensors", "onnx"))
    predictor = Predictor(folder / "export", device="cpu")
    onnx = OnnxPredictor(folder / "export", threads=args.threads)
    images = sorted((DATA / "covid3" / "images").rglob("*.png"))[: max(args.batch)]
    inputs = torch.cat([predictor.model_input(predictor.load(p)) for p in images])
    print(
        f"{datetime.date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}; torch {torch.__version__}, threads {args.threads}, {args.size} px"
    )
    print("| batch | PyTorch ms | onnxruntime ms | ratio ort/torch (median; per round) |")
    print("|---|---|---|---|")

    def torch_side(x: torch.Tensor) -> None:
        """What the graph computes: probabilities, features, the OOD score and the input gate's."""
        predictor.forward_batch(x)
        if predictor.gate is not None:
            predictor.gate.score(input_statistics(x))

    for batch in args.batch:
        x = inputs[:batch]
        pixels = x.numpy()
        torch_side(x), onnx.run(pixels)  # warm-up both
        rows = []
        for _ in range(args.rounds):
            t = timed(lambda x=x: torch_side(x), args.repeats)
            o = timed(lambda p=pixels: onnx.run(p), args.repeats)
            rows.append((t, o))
        ratios = [o / t for t, o in rows]
        print(
            f"| {batch} | {statistics.median(t for t, _ in rows):.1f} | {statistics.median(o for _, o in rows):.1f} "
            f"| **{statistics.median(ratios):.2f}** ({', '.join(f'{r:.2f}' for r in ratios)}) |"
        )


if __name__ == "__main__":
    main()
