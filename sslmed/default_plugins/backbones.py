"""Backbones ``resnet18``, ``resnet34``, ``resnet50`` from torchvision (random init)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision import models as tv_models

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl


class ResNetBackbone(Backbone):
    """A torchvision ResNet, randomly initialised, without its classification layer.

    ``small_input`` swaps the 7×7/2 stem and max-pool for a 3×3/1 stem (as for
    CIFAR-sized inputs), so 28-64 px images keep a useful feature map.
    """

    def __init__(
        self, arch: str, in_channels: int = 1, small_input: bool = False, zero_init_residual: bool = False
    ) -> None:
        super().__init__()
        net = getattr(tv_models, arch)(weights=None, zero_init_residual=zero_init_residual)
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_dim = net.fc.in_features
        self.in_channels = in_channels
        self.stride = 8 if small_input else 32
        self.arch = arch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def last_stage(self) -> nn.Module:
        return self.layer4

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(name, getattr(self, name)) for name in ("layer1", "layer2", "layer3", "layer4")]


class ResNetArgs(BaseModel):
    """Arguments of the ResNet backbones (the input channels come from the step)."""

    model_config = ConfigDict(extra="forbid")
    small_input: bool = Field(False, description="3×3 stride-1 stem without max-pool, for 28-64 px images")
    zero_init_residual: bool = Field(False, description="start each residual block as the identity")


def build_resnet(arch: str, args: ResNetArgs, *, in_channels: int = 1, **_context: Any) -> ResNetBackbone:
    return ResNetBackbone(
        arch, in_channels=in_channels, small_input=args.small_input, zero_init_residual=args.zero_init_residual
    )


@hookimpl
def register_backbones(register: Register) -> None:
    for arch in ("resnet18", "resnet34", "resnet50"):
        register(arch, partial(build_resnet, arch), args=ResNetArgs, description=f"torchvision {arch}, random init")
