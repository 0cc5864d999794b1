"""The ``resnet_decoder``: reconstructs an image from a backbone's last feature map.

It mirrors a ResNet encoder the simple way: one up-sampling block (×2 up-sampling, two
3×3 convolutions with batch norm and ReLU) per halving the encoder did, channels
halving on the way up, then a 3×3 convolution to the image channels. There are no skip
connections, so everything the reconstruction needs must pass through the encoder's
last feature map (what CRSM wants the encoder to learn). Image sizes that are not a
multiple of the encoder's stride (28 px, 100 px) are matched by a final bilinear
interpolation.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import Register, hookimpl


class ResNetDecoderArgs(BaseModel):
    """Arguments of ``resnet_decoder`` (its input and output sizes come from the backbone
    and the step)."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(128, ge=8, description="channels of the first block (halved by each further block)")
    min_width: int = Field(16, ge=4, description="channels never drop below this")
    convs_per_block: int = Field(1, ge=1, le=4, description="3×3 convolutions per up-sampling block")
    upsample: Literal["nearest", "bilinear", "transposed"] = Field(
        "nearest", description="how each block doubles the resolution"
    )


class UpBlock(nn.Sequential):
    """×2 up-sampling, then ``convs`` 3×3 conv + batch norm + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, convs: int, mode: str) -> None:
        layers: list[nn.Module] = []
        if mode == "transposed":
            layers += [
                nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch, convs = out_ch, convs - 1
        else:
            layers.append(
                nn.Upsample(scale_factor=2, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
            )
        for _ in range(convs):
            layers += [
                nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        super().__init__(*layers)


class ResNetDecoder(nn.Module):
    """Feature map ``B×feature_dim×h×w`` -> image ``B×out_channels×image_size×image_size``.

    The output is in the normalised space of the model inputs (no final activation), so
    it compares directly with the views the encoder saw.
    """

    def __init__(
        self, feature_dim: int, stride: int, image_size: int, out_channels: int, args: ResNetDecoderArgs
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.out_channels = out_channels
        blocks = int(round(math.log2(stride)))
        self.reduce = nn.Sequential(
            nn.Conv2d(feature_dim, args.width, kernel_size=1, bias=False),
            nn.BatchNorm2d(args.width),
            nn.ReLU(inplace=True),
        )
        layers, channels = [], args.width
        for _ in range(blocks):
            out = max(args.min_width, channels // 2)
            layers.append(UpBlock(channels, out, args.convs_per_block, args.upsample))
            channels = out
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.reduce(features)))
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return x


def build_resnet_decoder(
    args: ResNetDecoderArgs, *, backbone: Any, image_size: int, out_channels: int, **_context: Any
) -> ResNetDecoder:
    """Up-sampling decoder without skip connections, from a ResNet-like backbone's last feature map."""
    feature_dim = getattr(backbone, "feature_dim", None)
    stride = getattr(backbone, "stride", None)
    name = type(backbone).__name__
    if not isinstance(feature_dim, int) or not isinstance(stride, int) or not hasattr(backbone, "forward_features"):
        raise UsageError(
            f"decoder 'resnet_decoder' does not support backbone {name}: it needs integer "
            "'feature_dim' and 'stride' attributes and a 'forward_features' method (sslmed.core.backbone.Backbone)"
        )
    if stride < 1 or stride & (stride - 1):
        raise UsageError(
            f"decoder 'resnet_decoder' does not support backbone {name}: its stride {stride} is not a power of two"
        )
    if out_channels not in (1, 3):
        raise UsageError(f"decoder 'resnet_decoder': out_channels must be 1 or 3, got {out_channels}")
    if image_size < 8:
        raise UsageError(f"decoder 'resnet_decoder': image_size must be at least 8, got {image_size}")
    return ResNetDecoder(feature_dim, stride, image_size, out_channels, args)


@hookimpl
def register_decoders(register: Register) -> None:
    register("resnet_decoder", build_resnet_decoder, args=ResNetDecoderArgs)
