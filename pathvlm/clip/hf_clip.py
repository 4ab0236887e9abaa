"""transformers' ``CLIPModel`` folders (PLIP's format) behind the same interface as open_clip models.

The adapter exposes ``encode_image``, ``encode_text``, ``logit_scale`` and ``visual.preprocess_cfg``
so zero-shot, retrieval and training code never branch on the backend.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class HFCLIPModel(nn.Module):
    is_hf_clip = True

    def __init__(self, hf_model, processor):
        super().__init__()
        self.hf = hf_model
        self.processor = processor
        ip = processor.image_processor
        crop = ip.crop_size if isinstance(ip.crop_size, int) else ip.crop_size.get("height", 224)
        self.preprocess_cfg = {
            "size": crop,
            "mean": list(ip.image_mean),
            "std": list(ip.image_std),
            "interpolation": "bicubic" if int(getattr(ip, "resample", 3)) == 3 else "bilinear",
            "resize_mode": "shortest",
        }
        # not registered as a submodule twice: the vision tower lives in self.hf
        object.__setattr__(self, "visual", _InfoOnly(self.preprocess_cfg))
        self.logit_scale = self.hf.logit_scale

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        out = self.hf.get_image_features(pixel_values=images)
        feats = out.pooler_output if hasattr(out, "pooler_output") and not torch.is_tensor(out) else out
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # CLIP's text tower is causal and pools at the first end-of-text token, so padding after it
        # cannot change the result: no attention mask is needed (and pad == eos in CLIP tokenizers).
        out = self.hf.get_text_features(input_ids=input_ids)
        feats = out.pooler_output if hasattr(out, "pooler_output") and not torch.is_tensor(out) else out
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images=None, texts=None):
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(texts, normalize=True) if texts is not None else None
        return img, txt, self.logit_scale.exp()

    def save_hf(self, folder: Path) -> None:
        self.hf.save_pretrained(folder, safe_serialization=True)
        self.processor.save_pretrained(folder)


class _InfoOnly:
    def __init__(self, preprocess_cfg):
        self.preprocess_cfg = preprocess_cfg
        self.image_size = preprocess_cfg["size"]


class HFCLIPTokenizer:
    """Callable like open_clip's tokenizers: list of strings -> LongTensor [B, context_length]."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts), padding="max_length", truncation=True,
            max_length=context_length or self.context_length, return_tensors="pt",
        )
        return enc["input_ids"]


def load_hf_clip(path_or_id: str):
    """Load a transformers CLIPModel folder or hub id (never with remote code)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path_or_id, trust_remote_code=False)
    processor = CLIPProcessor.from_pretrained(path_or_id, trust_remote_code=False)
    model.eval()
    wrapped = HFCLIPModel(model, processor)
    tok = HFCLIPTokenizer(processor.tokenizer, model.config.text_config.max_position_embeddings)
    return wrapped, tok
