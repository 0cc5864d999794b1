"""Backbones: encoders with pooled features and a last feature map."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tv_models


class Backbone(nn.Module):
    """An encoder. ``forward`` gives pooled ``B×feature_dim`` features;
    ``forward_features`` gives the last feature map ``B×C×h×w`` (for decoders and Grad-CAM).
    """

    feature_dim: int
    in_channels: int
    #: total down-sampling from input to the last feature map
    stride: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_stage(self) -> nn.Module:  # pragma: no cover - abstract
        """The module whose output is the last feature map (Grad-CAM's target)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)


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
