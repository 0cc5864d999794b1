"""Draw docs/images/clahe.png: a real chest X-ray before and after CLAHE.

    python plugins/sslmed-clahe/examples/figure.py [IMAGE] [--out docs/images/clahe.png]

IMAGE defaults to a sample of the shared data (../shared/data/samples).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sslmed_clahe.equalize import clahe  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DEFAULT_IMAGE = REPO.parent / "shared" / "data" / "samples" / "darkcovidnet_00001304_001.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", nargs="?", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "clahe.png")
    args = parser.parse_args()
    image = np.asarray(Image.open(args.image).convert("L").resize((512, 512), Image.BILINEAR))
    panels = [
        ("original", image),
        ("clahe clip_limit=2, tile_grid=8", clahe(image, 2.0, 8)),
        ("clahe clip_limit=4, tile_grid=4", clahe(image, 4.0, 4)),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(10.5, 5.6), gridspec_kw={"height_ratios": [4, 1]})
    for column, (title, panel) in enumerate(panels):
        axes[0, column].imshow(panel, cmap="gray", vmin=0, vmax=255)
        axes[0, column].set_title(title, fontsize=10)
        axes[0, column].axis("off")
        axes[1, column].hist(panel.ravel(), bins=64, range=(0, 255), color="#455a64")
        axes[1, column].set_yticks([])
        axes[1, column].set_xlim(0, 255)
        axes[1, column].tick_params(labelsize=8)
    axes[1, 0].set_ylabel("pixels", fontsize=8)
    axes[1, 1].set_xlabel("grey level", fontsize=8)
    figure.suptitle(f"{args.image.name}: CLAHE equalises each tile's histogram, within a contrast limit", fontsize=10)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
