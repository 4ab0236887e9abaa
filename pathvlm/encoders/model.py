"""An image-only encoder behind the same ``encode_image`` API as the CLIP models.

Index building, image search, linear probes and few-shot evaluation only call ``encode_image``
and read ``visual.preprocess_cfg``; an :class:`ImageEncoder` offers exactly that, so those paths
never branch on the model kind. It has no ``encode_text``: commands that need text check
``is_image_only`` and say so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("timm", "cls", "cls+mean")


class ImageEncoder(nn.Module):
    is_image_only = True

    def __init__(self, backbone: nn.Module, backend: str, pooling: str, preprocess_cfg: dict, name: str,
                 known: str | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.backbone = backbone
        self.backend = backend  # "timm" or "transformers"
        self.pooling = pooling
        self.preprocess_cfg = dict(preprocess_cfg)
        self.pathvlm_name = name
        self.known = known  # the registry entry it was matched to, if any
        # an info-only ``visual``, as HFCLIPModel has: the tower itself is ``backbone``
        object.__setattr__(self, "visual", _Info(self.preprocess_cfg))

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens at the front of the token sequence (excluded from patch means)."""
        if self.backend == "timm":
            return int(getattr(self.backbone, "num_prefix_tokens", 1))
        return 1

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """All output tokens after the final norm, [B, prefix + patches, D]."""
        if self.backend == "timm":
            return self.backbone.forward_features(pixels)
        return self.backbone(pixel_values=pixels).last_hidden_state

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if self.pooling == "timm":
            # what model(x) returns for a headless timm model: its own global pool (CLS for ViTs), fc_norm
            feats = self.backbone.forward_head(self.backbone.forward_features(pixels), pre_logits=True)
        else:
            tokens = self.forward_tokens(pixels)
            feats = tokens[:, 0]
            if self.pooling == "cls+mean":
                feats = torch.cat([feats, tokens[:, self.num_prefix_tokens:].mean(1)], dim=-1)
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixels)

    @property
    def embed_dim(self) -> int:
        width = getattr(self.backbone, "num_features", None) or getattr(self.backbone.config, "hidden_size")
        return int(width) * (2 if self.pooling == "cls+mean" else 1)


class _Info:
    def __init__(self, preprocess_cfg: dict):
        self.preprocess_cfg = preprocess_cfg
        self.image_size = preprocess_cfg.get("crop", preprocess_cfg.get("size"))


def eval_transform(cfg: dict):
    """Resize the shorter side, centre-crop, to tensor, normalise: the model cards' evaluation transform."""
    from torchvision import transforms as T

    modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
             "nearest": T.InterpolationMode.NEAREST}
    return T.Compose([
        T.Resize(int(cfg["resize"]), interpolation=modes.get(cfg.get("interpolation", "bicubic"), modes["bicubic"])),
        T.CenterCrop(int(cfg["crop"])),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(mean=cfg["mean"], std=cfg["std"]),
    ])


def _to_rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img
