"""The objectives of issue 19 at test size: small heads, so a step takes milliseconds."""

from __future__ import annotations

from typing import Any

import torch

from sslmed.methods import SSLMethod
from sslmed.plugins import get_registry

#: each method's own arguments at test size (the paper's heads are thousands wide)
SMALL: dict[str, dict[str, Any]] = {
    "byol": {"projection_hidden_dim": 64, "projection_dim": 32, "prediction_hidden_dim": 64},
    "moco": {"projection_hidden_dim": 64, "projection_dim": 32, "queue_size": 64},
    "moco_v3": {"projection_hidden_dim": 64, "projection_dim": 32, "queue_size": 0, "prediction_hidden_dim": 64},
    "simsiam": {"projection_hidden_dim": 64, "projection_dim": 64, "prediction_hidden_dim": 16},
    "fastsiam": {"projection_hidden_dim": 64, "projection_dim": 64, "prediction_hidden_dim": 16, "views": 4},
    "dino": {"hidden_dim": 64, "bottleneck_dim": 16, "output_dim": 64},
    "vicreg": {"projection_hidden_dim": 64, "projection_dim": 64},
    "barlow_twins": {"projection_hidden_dim": 64, "projection_dim": 64},
}
METHODS = list(SMALL)
#: which backbone each exports (the one its paper evaluates)
EXPORTED = {name: "teacher" if name == "dino" else "student" for name in METHODS}
#: how many views each one reads (dino: 2 global + 2 local in these tests)
VIEWS = {"fastsiam": 4, "dino": 4}


def objective_spec(method: str) -> dict[str, Any]:
    """The recipe spec of ``method`` at test size (``moco_v3`` is moco without a queue)."""
    name = "moco" if method == "moco_v3" else method
    return {"name": name, **SMALL[method]}


def build(method: str, seed: int = 0, small_input: bool = True) -> SSLMethod:
    """``method`` on a ResNet-18 for 1-channel 16 px images, with seeded weights."""
    registry = get_registry()
    torch.manual_seed(seed)
    backbone = registry.build("backbone", {"name": "resnet18", "small_input": small_input}, in_channels=1)
    return registry.build(
        "objective", objective_spec(method), backbone=backbone, build=registry.build, image_size=16, in_channels=1
    )


def random_views(method: str, batch: int = 8, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    """Seeded normal views: 2 (4 for fastsiam; 2 global + 2 local at half size for dino)."""
    generator = torch.Generator().manual_seed(seed)
    if method == "dino":
        sizes = [size, size, size // 2, size // 2]
    else:
        sizes = [size] * VIEWS.get(method, 2)
    return [torch.randn(batch, 1, s, s, generator=generator) for s in sizes]
