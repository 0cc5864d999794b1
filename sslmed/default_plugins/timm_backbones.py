"""Backbone ``timm``: any model of the timm library by name, randomly initialised.

::

    backbone: {name: timm, model: convnext_atto}
    backbone: {name: timm, model: vit_tiny_patch16_224, args: {img_size: 64, patch_size: 8}}

``args`` are keyword arguments of ``timm.create_model`` (``img_size``, ``drop_path_rate``,
``depth``, ``global_pool``, ...). The input channels come from the step (``in_chans``)
and the weights are never downloaded (``pretrained`` is always false): pre-training
starts from random weights, as the other backbones do.

What the :class:`~sslmed.core.backbone.Backbone` contract gets from a timm model:

* pooled features (``forward``): timm's own head without the classifier
  (``forward_head(..., pre_logits=True)``: average pooling for CNNs, the class token or
  the token average for ViTs as ``global_pool`` says), ``feature_dim`` long;
* the last feature map (``forward_features``): ``B×C×h×w`` for CNNs (channels-last
  models such as Swin are permuted); for ViTs the patch tokens laid out on the patch
  grid (prefix tokens dropped), so CRSM's decoder and Grad-CAM see a map;
* ``stride``: the reduction of timm's last ``feature_info`` entry (a ViT's patch size);
* ``last_stage``: the map as the pooled features are computed from it, Grad-CAM's
  target. A ViT that pools its class token (timm's default, ``global_pool: token``)
  takes nothing from the patch map, so Grad-CAM shows no map and says why; give
  ``global_pool: avg`` for maps.

Input sizes: a ViT built with ``img_size`` takes that size only. Views of other sizes
(``multicrop``'s local views, for DINO) need ``dynamic_img_size: true`` (the position
embeddings are resampled to the patch grid) and a size that is a multiple of the patch
size, or ``dynamic_img_pad: true`` as well (padded up to whole patches); anything else
is refused in one line naming the key.

``timm`` is imported only when such a backbone is built or checked.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from sslmed.core.backbone import Backbone, GradCamUnavailable
from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import hookimpl

#: arguments the plugin sets itself
RESERVED = {
    "pretrained": "always false here (weights are never downloaded; pre-train with sslmed)",
    "in_chans": "comes from the step's in_channels",
    "num_classes": "the classifier is removed (sslmed's probes and heads sit on the pooled features)",
    "features_only": "the plugin gives the feature map itself (forward_features)",
    "pretrained_cfg_overlay": "no pretrained weights are used",
    "checkpoint_path": "load weights with the step's init_from instead",
}


def _timm() -> Any:
    try:
        import timm  # here: only timm backbones need it (start-up speed of everything else)
    except ImportError:  # pragma: no cover - timm is a dependency
        raise UsageError("backbone 'timm' needs the timm package (pip install timm)") from None
    return timm


class _Map(nn.Module):
    """The identity: marks where the feature map is (Grad-CAM hooks its output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TimmBackbone(Backbone):
    """A timm model without its classifier, behind the Backbone contract."""

    def __init__(self, model: str, args: dict[str, Any], in_channels: int = 1) -> None:
        super().__init__()
        timm = _timm()
        try:
            self.net = timm.create_model(model, pretrained=False, in_chans=in_channels, num_classes=0, **args)
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
            raise UsageError(f"backbone timm: timm.create_model({model!r}, **{args!r}) failed: {exc}") from None
        self.model_name = model
        self.in_channels = in_channels
        self.map = _Map()
        self.prefix_tokens = int(getattr(self.net, "num_prefix_tokens", 0))
        patch = getattr(getattr(self.net, "patch_embed", None), "patch_size", None)
        #: ViT-like: forward_features gives tokens B×N×D, not a map
        self.tokens = patch is not None and hasattr(self.net, "blocks")
        self.channels_last = getattr(self.net, "output_fmt", "NCHW") == "NHWC"
        info = getattr(self.net, "feature_info", None)
        if self.tokens:
            self.patch = tuple(int(p) for p in (patch if isinstance(patch, (tuple, list)) else (patch, patch)))
            self.stride = self.patch[0]
        elif info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            self.stride = int(last["reduction"])
        else:  # pragma: no cover - every timm CNN family has feature_info
            self.stride = 32
        self.feature_dim = int(self.net.num_features)
        hidden = getattr(self.net, "head_hidden_size", None)
        #: timm's head adds a layer (MobileNetV3's conv_head): pool the map ourselves so the
        #: pooled features and the map have the same channels (decoders size by feature_dim)
        self.own_pooling = hidden is not None and int(hidden) != self.feature_dim
        self.pooling = str(getattr(self.net, "global_pool", "avg") or "avg")

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        if getattr(self.net.patch_embed, "dynamic_img_pad", False):  # padded up to whole patches
            return -(-x.shape[-2] // self.patch[0]), -(-x.shape[-1] // self.patch[1])
        return x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]

    def check_input_size(self, x: torch.Tensor) -> None:
        """A ViT takes only the sizes its patch embedding allows: one line saying which otherwise."""
        if not self.tokens:
            return
        embed = self.net.patch_embed
        height, width = int(x.shape[-2]), int(x.shape[-1])
        fixed = embed.img_size if getattr(embed, "strict_img_size", False) else None
        if fixed is not None and (height, width) != tuple(fixed):
            raise UsageError(
                f"backbone timm {self.model_name}: a {height}×{width} px input, but it takes {fixed[0]}×{fixed[1]} "
                "only (args.img_size); for views of other sizes (multicrop's local views) give args: "
                "{dynamic_img_size: true}"
            )
        patch = self.patch[0]
        if fixed is None and not getattr(embed, "dynamic_img_pad", False) and (height % patch or width % patch):
            raise UsageError(
                f"backbone timm {self.model_name}: a {height}×{width} px input is not a multiple of its patch_size "
                f"{patch}; give multicrop a local_size that is (e.g. {max(1, round(height / patch)) * patch}) "
                "or args: {dynamic_img_pad: true}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        return self.map(self._native_to_map(self.net.forward_features(x), x))

    def _native_to_map(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            h, w = self._grid(x)
            patches = out[:, self.prefix_tokens :]
            return patches.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
        return out.permute(0, 3, 1, 2) if self.channels_last else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input_size(x)
        out = self.net.forward_features(x)
        feature_map = self.map(self._native_to_map(out, x))  # the map the pooled features come from
        if self.own_pooling:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)
        if self.tokens:  # the patch tokens back from the map, so Grad-CAM's gradient reaches it
            patches = feature_map.flatten(2).transpose(1, 2)
            out = torch.cat([out[:, : self.prefix_tokens], patches], dim=1)
        elif self.channels_last:
            out = feature_map.permute(0, 2, 3, 1)
        else:
            out = feature_map
        return self.net.forward_head(out, pre_logits=True)

    def last_stage(self) -> nn.Module:
        if self.tokens and self.pooling not in ("avg", "avgmax", "max"):
            raise GradCamUnavailable(
                f"timm {self.model_name} pools its {self.pooling!r} token, which takes nothing from the "
                "patch map; train it with args: {global_pool: avg} for Grad-CAM maps"
            )
        return self.map


class TimmArgs(BaseModel):
    """Arguments of the ``timm`` backbone."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="a timm model name (`timm.list_models()`), e.g. resnet18, convnext_atto")
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of timm.create_model, e.g. {img_size: 64, drop_path_rate: 0.1}; "
        "in_chans comes from the step, pretrained is always false",
    )

    @field_validator("model")
    @classmethod
    def _known(cls, name: str) -> str:
        timm = _timm()
        if not timm.is_model(name):
            hint = difflib.get_close_matches(name, timm.list_models(), n=3)
            raise ValueError(
                f"timm has no model {name!r}" + (f"; did you mean {' or '.join(map(repr, hint))}?" if hint else "")
            )
        return name

    @field_validator("args")
    @classmethod
    def _not_reserved(cls, args: dict[str, Any]) -> dict[str, Any]:
        for key, why in RESERVED.items():
            if key in args:
                raise ValueError(f"args.{key} cannot be set: {why}")
        return args


def build_timm(args: TimmArgs, *, in_channels: int = 1, **_context: Any) -> TimmBackbone:
    return TimmBackbone(args.model, dict(args.args), in_channels=in_channels)


@hookimpl
def register_backbones(register: Any) -> None:
    register("timm", build_timm, args=TimmArgs, description="any timm model by name (random init)")
