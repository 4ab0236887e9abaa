"""KEEP (Zhou et al. 2024, ``Astaxanthin/KEEP``) loaded natively, without its remote code.

The hub folder: ``config.json`` (``model_type: keep``, ``text_config`` = a BERT config,
``projection_dim``), ``pytorch_model.bin`` and the BERT tokenizer files. Its modelling file
(``modeling_keep.py``, run by ``trust_remote_code``) builds, and this module builds the same from
timm and transformers parts:

- ``visual``: ``timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16,
  init_values=1e-5, num_classes=0, dynamic_img_size=True)``;
- ``visual_head``: Linear(1024, projection_dim) - GELU - Linear(projection_dim, projection_dim);
- ``text``: ``BertModel(BertConfig(**text_config))``, embedded by its ``pooler_output``;
- ``logit_scale``.

Preprocessing (its ``load_model``): Resize(224, bicubic), CenterCrop(224), ImageNet mean/std.
Texts: its tokenizer with ``max_length=256``, padded and truncated, as in the model card.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pathvlm.errors import SourceError

VISION_ARCH = "vit_large_patch16_224"
VISION_KWARGS = {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True}
CONTEXT_LENGTH = 256


class KeepModel(nn.Module):
    pathvlm_backend = "keep"

    def __init__(self, config: dict, vision_kwargs: dict | None = None):
        super().__init__()
        import timm
        from transformers import BertConfig, BertModel

        self.config = dict(config)
        proj = int(config.get("projection_dim", 768))
        self.visual = timm.create_model(VISION_ARCH, pretrained=False, **(vision_kwargs or VISION_KWARGS))
        self.visual_head = nn.Sequential(nn.Linear(self.visual.num_features, proj), nn.GELU(), nn.Linear(proj, proj))
        self.text = BertModel(BertConfig(**(config.get("text_config") or {})))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.04)))
        self.visual.preprocess_cfg = {"size": int(self.visual.patch_embed.img_size[0]),
                                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                      "interpolation": "bicubic", "resize_mode": "shortest"}

    @property
    def pad_id(self) -> int:
        return int(self.text.config.pad_token_id or 0)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.visual_head(self.visual(pixels))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()
        feats = self.text(input_ids=tokens, attention_mask=mask).pooler_output
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, images=None, texts=None):
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(texts, normalize=True) if texts is not None else None
        return img, txt, self.logit_scale.exp()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        for p in self.visual.parameters():
            p.requires_grad = False
        for block in list(self.visual.blocks)[len(self.visual.blocks) - unlocked_groups:] if unlocked_groups else []:
            for p in block.parameters():
                p.requires_grad = True

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        for p in self.text.parameters():
            p.requires_grad = False
        layers = list(self.text.encoder.layer)
        for layer in layers[len(layers) - unlocked_layers:] if unlocked_layers else []:
            for p in layer.parameters():
                p.requires_grad = True

    def save_folder(self, folder: Path, tokenizer) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})
        (Path(folder) / "config.json").write_text(json.dumps(self.config, indent=2))
        tokenizer.tokenizer.save_pretrained(folder)


def vision_kwargs_from_weights(state: dict) -> dict:
    """KEEP's ViT sizes as its checkpoint shows them (ViT-L/16 at 224 for the published model; heads = width / 64)."""
    try:
        width = state["visual.cls_token"].shape[-1]
        patch = state["visual.patch_embed.proj.weight"].shape[-1]
        grid = int(round((state["visual.pos_embed"].shape[1] - 1) ** 0.5))
        hidden = state["visual.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise SourceError(f"not a KEEP checkpoint: no tensor {e}") from None
    depth = len({k.split(".")[2] for k in state if k.startswith("visual.blocks.")})
    return {**VISION_KWARGS, "img_size": grid * patch, "patch_size": patch, "embed_dim": width, "depth": depth,
            "num_heads": max(1, width // 64), "mlp_ratio": hidden / width}


def load_keep_folder(folder: Path):
    from transformers import AutoTokenizer

    from pathvlm.clip.hf_clip import HFCLIPTokenizer
    from pathvlm.encoders.timm_hub import check_keys, load_state_dict

    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config.get("text_config"), dict):
        raise SourceError(f"{folder / 'config.json'}: model_type keep but no text_config (the BERT config)")
    weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).exists()), None)
    if weights is None:
        raise SourceError(f"{folder}: KEEP config.json but no pytorch_model.bin")
    state = load_state_dict(weights)
    state.pop("text.embeddings.position_ids", None)  # a buffer older transformers saved; rebuilt by BertModel
    model = KeepModel(config, vision_kwargs_from_weights(state))
    check_keys(model.state_dict(), state, weights, "KEEP")
    model.load_state_dict(state, strict=True)
    model.eval()
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), do_lower_case=True, local_files_only=True,
                                            trust_remote_code=False)
    except Exception as e:
        raise SourceError(f"{folder}: KEEP's tokenizer files (vocab.txt, tokenizer_config.json) could not be read "
                          f"({type(e).__name__}: {str(e)[:200]})") from None
    return model, HFCLIPTokenizer(tok, CONTEXT_LENGTH)
