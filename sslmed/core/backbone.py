"""The backbone contract: an encoder with pooled features and a last feature map.

Concrete backbones are components (``sslmed/default_plugins/backbones.py`` holds the
torchvision ResNets); see the ``register_backbones`` hook.
"""

from __future__ import annotations

import torch
from torch import nn

from sslmed.core.errors import UsageError


class GradCamUnavailable(UsageError):
    """Grad-CAM cannot explain this backbone (raised by ``last_stage``; the reason is the
    message, which Grad-CAM shows in place of a map)."""


class Backbone(nn.Module):
    """An encoder. ``forward`` gives pooled ``B×feature_dim`` features;
    ``forward_features`` gives the last feature map ``B×C×h×w`` (for decoders and Grad-CAM).
    """

    #: size of the pooled features
    feature_dim: int
    #: image channels the backbone takes (1 or 3)
    in_channels: int
    #: total down-sampling from input to the last feature map (decoders size their up-sampling by it)
    stride: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_stage(self) -> nn.Module:  # pragma: no cover - abstract
        """The module whose output is the last feature map (Grad-CAM's target);
        :class:`GradCamUnavailable` with the reason when no map can explain the features."""
        raise NotImplementedError

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The stages whose outputs are feature maps, shallow to deep, by name (Grad-CAM
        picks the deepest with a useful spatial size). Default: the last stage only."""
        return [("last stage", self.last_stage())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_features(x), 1), 1)
