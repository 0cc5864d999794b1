"""The objectives of issue 19 at test size: small heads, so a step takes milliseconds."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import hookimpl
from sslmed.core.plugins import get_registry
from sslmed.training.methods import SSLMethod


class TinyBackbone(Backbone):
    """Two strided convolutions: enough for the losses and their gradients, in microseconds."""

    def __init__(self, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        )
        self.feature_dim, self.in_channels, self.stride = 2 * width, in_channels, 4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def last_stage(self) -> nn.Module:
        return self.blocks[-1]


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


class TinyBackboneArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 8


class TinyBackbonePlugin:
    """Registers :class:`TinyBackbone` as ``test_tiny_cnn``: real-data runs whose
    checkpoints are kilobytes (a ResNet-18 with its teacher and Adam state is ~180 MB)."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register(
            "test_tiny_cnn",
            lambda args, *, in_channels, **_: TinyBackbone(in_channels, args.width),
            args=TinyBackboneArgs,
        )


def objective_spec(method: str) -> dict[str, Any]:
    """The recipe spec of ``method`` at test size (``moco_v3`` is moco without a queue)."""
    name = "moco" if method == "moco_v3" else method
    return {"name": name, **SMALL[method]}


def build(method: str, seed: int = 0, tiny: bool = True) -> SSLMethod:
    """``method`` for 1-channel 16 px images, with seeded weights, on :class:`TinyBackbone`
    (or a ResNet-18 for small inputs)."""
    registry = get_registry()
    torch.manual_seed(seed)
    if tiny:
        backbone: Backbone = TinyBackbone()
    else:
        backbone = registry.build("backbone", {"name": "resnet18", "small_input": True}, in_channels=1)
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
