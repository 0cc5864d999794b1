"""Backbones ``resnet18``, ``resnet34``, ``resnet50`` from torchvision (random init)."""

from __future__ import annotations

from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sslmed.hookspecs import hookimpl
from sslmed.models import ResNetBackbone


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
def register_backbones(register: Any) -> None:
    for arch in ("resnet18", "resnet34", "resnet50"):
        register(arch, partial(build_resnet, arch), args=ResNetArgs, description=f"torchvision {arch}, random init")
