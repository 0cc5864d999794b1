"""The device view pipeline: sslmed's hand-written batched SimCLR views vs the same
views with kornia.augmentation, side by side in one process (speed), and the
distribution checks of ``tests/test_device_aug.py`` applied to both (against
torchvision's RandomResizedCrop and lightly's ColorJitter, the per-image CPU reference).

kornia's pipeline: ``RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3))``,
``RandomHorizontalFlip(hf_prob)``, ``ColorJitter(brightness, contrast, p=cj_prob)``,
``Normalize`` on float [0, 1] batches; two views per call, as sslmed's.

    .venv/bin/python bench/kornia_views.py --batch 64 --source-size 128 --size 64 --rounds 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from pathlib import Path

import kornia
import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2

from sslmed.default_plugins.augmentations import BatchedSimCLRViews, SimCLRViewArgs, build_simclr_views
from sslmed.training.transforms import MEAN, STD

DATA = Path(os.environ.get("SSLMED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
N, ALPHA = 3000, 0.001  # as tests/test_device_aug.py


class KorniaSimCLRViews:
    """The ``simclr`` views (grey: crop, flip, brightness/contrast jitter) with kornia."""

    def __init__(self, args: SimCLRViewArgs, image_size: int) -> None:
        s = args.cj_strength
        self.crop = K.RandomResizedCrop((image_size, image_size), scale=(args.min_scale, 1.0), ratio=(3 / 4, 4 / 3))
        self.jitter = K.ColorJitter(s * args.cj_bright, s * args.cj_contrast, 0.0, 0.0, p=args.cj_prob)
        self.pipeline = K.AugmentationSequential(
            self.crop,
            K.RandomHorizontalFlip(p=args.hf_prob),
            self.jitter,
            K.Normalize(mean=torch.tensor([MEAN]), std=torch.tensor([STD])),
        )

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.float() / 255.0
        return [self.pipeline(x), self.pipeline(x)]


def real_batch(n: int, size: int) -> torch.Tensor:
    files = sorted((DATA / "cxr_corpus" / "images" / "radiography").rglob("*.jp*g"))[:n]
    arrays = [np.asarray(Image.open(f).convert("L").resize((size, size))) for f in files]
    return torch.from_numpy(np.stack(arrays))[:, None]


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def distribution_checks(args: SimCLRViewArgs) -> dict[str, dict[str, str]]:
    """p-values (KS / binomial) of each side's parameters against the CPU reference."""
    compose = build_simclr_views(args, image_size=64, in_channels=1).transforms[0].transform
    crop = next(t for t in compose.transforms if isinstance(t, v2.RandomResizedCrop))
    apply = next(t for t in compose.transforms if isinstance(t, v2.RandomApply))
    torch.manual_seed(0)
    ref_crops = [crop.make_params([torch.zeros(1, 64, 64)]) for _ in range(N)]
    ref_scale = np.array([p["height"] * p["width"] / 64**2 for p in ref_crops])
    ref_ratio = np.array([p["width"] / p["height"] for p in ref_crops])
    ref_jitter = [apply.transforms[0].make_params([torch.zeros(1, 8, 8)]) for _ in range(N)]
    out: dict[str, dict[str, str]] = {}

    p = BatchedSimCLRViews(args, 64, 1).sample_params(N, 64, 64, torch.Generator().manual_seed(0))
    boxes = p["boxes"]
    hand = {
        "scale": boxes[:, 2] * boxes[:, 3] / 64**2,
        "ratio": boxes[:, 3] / boxes[:, 2],
        "brightness": p["brightness"],
        "contrast": p["contrast"],
        "jitter": p["jitter"],
        "brightness_first": (p["order"][:, 0] == 0),
    }
    torch.manual_seed(0)
    views = KorniaSimCLRViews(args, 64)
    kc = views.crop.forward_parameters(torch.Size([N, 1, 64, 64]))["src"]
    kw, kh = kc[:, 1, 0] - kc[:, 0, 0] + 1, kc[:, 2, 1] - kc[:, 1, 1] + 1
    kj = views.jitter.forward_parameters(torch.Size([N, 1, 64, 64]))
    order = kj["order"].tolist()  # one order for the whole batch
    korn = {
        "scale": kw * kh / 64**2,
        "ratio": kw / kh,
        "brightness": kj["brightness_factor"],
        "contrast": kj["contrast_factor"],
        "jitter": kj["batch_prob"] > 0.5,
        "brightness_first": torch.full((N,), order.index(0) < order.index(1)),
    }
    ref = {
        "scale": ref_scale,
        "ratio": ref_ratio,
        "brightness": np.array([r["brightness_factor"] for r in ref_jitter]),
        "contrast": np.array([r["contrast_factor"] for r in ref_jitter]),
    }
    for name, side in (("hand-written", hand), ("kornia", korn)):
        row = {}
        for key in ("scale", "ratio", "brightness", "contrast"):
            row[key] = stats.ks_2samp(ref[key], np.asarray(side[key], dtype=float)).pvalue
        row["jitter rate"] = stats.binomtest(int(side["jitter"].sum()), N, apply.p).pvalue
        row["order per image"] = stats.binomtest(int(side["brightness_first"].sum()), N, 0.5).pvalue
        out[name] = {k: f"{v:.3g}" + ("" if v > ALPHA else " FAIL") for k, v in row.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--source-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    view_args = SimCLRViewArgs()
    images = real_batch(args.batch, args.source_size)
    hand, korn = BatchedSimCLRViews(view_args, args.size, 1), KorniaSimCLRViews(view_args, args.size)
    hand(images), korn(images)  # warm-up
    rounds = []
    for _ in range(args.rounds):
        rounds.append((timed(lambda: hand(images), args.repeats), timed(lambda: korn(images), args.repeats)))
    print(
        f"{datetime.date.today()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
        f"kornia {kornia.__version__}, threads {torch.get_num_threads()}; batch {args.batch} real radiographs "
        f"{args.source_size} px -> 2 views of {args.size} px"
    )
    ratios = [k / h for h, k in rounds]
    print("| hand-written ms | kornia ms | ratio kornia/hand (median; per round) |")
    print("|---|---|---|")
    print(
        f"| {statistics.median(h for h, _ in rounds):.1f} | {statistics.median(k for _, k in rounds):.1f} | "
        f"**{statistics.median(ratios):.2f}** ({', '.join(f'{r:.2f}' for r in ratios)}) |"
    )
    checks = distribution_checks(view_args)
    keys = list(next(iter(checks.values())))
    print("\n| pipeline | " + " | ".join(f"p {k}" for k in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in checks.items():
        print(f"| {name} | " + " | ".join(row[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
