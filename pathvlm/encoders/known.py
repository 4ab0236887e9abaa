"""The image-only pathology foundation models pathvlm knows by name, and what each needs beyond its files.

A timm hub folder's ``config.json`` holds the architecture and the JSON-able constructor arguments,
but not everything the model cards pass: Python objects (``mlp_layer=SwiGLUPacked``,
``act_layer=SiLU``), LayerScale (``init_values``) for checkpoints whose config omits it, the
pooling of the output tokens (Virchow: CLS concatenated with the mean of the patch tokens) and,
for some, the preprocessing. Each fact below names where it comes from; a folder is matched to an
entry by its hub repo id, its folder name, its ``pretrained_cfg.tag`` or its architecture signature
(:func:`match_known`).

Models not listed still load when their folder is a plain timm hub folder or a transformers
ViT / DINOv2 folder: the packed SwiGLU MLP, LayerScale and register tokens are then read off the
weights' shapes, and the embedding is timm's own pooled output (``model(x)`` with no classifier).
"""
from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """An evaluation transform as the model cards write it: resize the shorter side, centre-crop, normalise."""

    resize: int = 224  # shorter side after resizing
    crop: int = 224  # centre crop (= the model's input size)
    interpolation: str = "bicubic"  # bicubic | bilinear
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def as_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class KnownEncoder:
    name: str
    repos: tuple  # hub ids (case-insensitive)
    backend: str  # "timm" (hub layout: config.json + pytorch_model.bin / model.safetensors) or "transformers"
    description: str
    source: str  # where the facts come from
    timm_kwargs: dict = field(default_factory=dict)  # the card's kwargs (override the config; objects by name)
    default_kwargs: dict = field(default_factory=dict)  # the card's dimensions, used where config.json has none
    pooling: str = "timm"  # timm: model(x) without a classifier | cls | cls+mean (mean over patch tokens, no registers)
    preprocess: Preprocess | None = None  # used when the folder's config.json has no pretrained_cfg
    card_preprocess: bool = False  # the model card's transform differs from its pretrained_cfg: use ``preprocess``
    tags: tuple = ()  # pretrained_cfg.tag values in the published config.json
    signature: dict = field(default_factory=dict)  # architecture + model_args that identify the folder
    dim: int = 0  # embedding size, for the docs and a sanity check

    def kwargs(self) -> dict:
        return timm_objects(self.timm_kwargs)

    def defaults(self) -> dict:
        return timm_objects(self.default_kwargs)


def timm_objects(kwargs: dict) -> dict:
    """Resolve the names of Python objects (``"SwiGLUPacked"``, ``"SiLU"``) the model cards pass to timm."""
    import torch
    from timm.layers import SwiGLUPacked

    table = {"SwiGLUPacked": SwiGLUPacked, "SiLU": torch.nn.SiLU}
    return {k: table.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}


_SWIGLU = {"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}
# H-optimus-0/1 model cards: Normalize(mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517))
_HOPTIMUS = Preprocess(224, 224, "bicubic", (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

KNOWN_ENCODERS: dict[str, KnownEncoder] = {e.name: e for e in [
    KnownEncoder(
        name="uni", repos=("MahmoodLab/UNI", "MahmoodLab/uni"), backend="timm", dim=1024,
        description="UNI (ViT-L/16, Mass-100K), Chen et al. 2024",
        source="huggingface.co/MahmoodLab/UNI model card: timm.create_model('hf-hub:MahmoodLab/uni', "
               "init_values=1e-5, dynamic_img_size=True); Resize(224), ImageNet mean/std; CLS token (model(x))",
        timm_kwargs={"init_values": 1e-5, "dynamic_img_size": True},
        preprocess=Preprocess(224, 224, "bilinear"), tags=("uni_mass100k",),
    ),
    KnownEncoder(
        name="uni2-h", repos=("MahmoodLab/UNI2-h",), backend="timm", dim=1536,
        description="UNI2-h (ViT-H/14, 8 register tokens, SwiGLU), Mahmood Lab 2025",
        source="huggingface.co/MahmoodLab/UNI2-h model card: timm_kwargs img_size=224, patch_size=14, depth=24, "
               "num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667*2, num_classes=0, "
               "no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=SiLU, reg_tokens=8, dynamic_img_size=True; "
               "ImageNet mean/std at 224; CLS token (model(x))",
        timm_kwargs={"init_values": 1e-5, "num_classes": 0, "no_embed_class": True, "dynamic_img_size": True,
                     **_SWIGLU},
        default_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "embed_dim": 1536,
                        "mlp_ratio": 2.66667 * 2, "reg_tokens": 8},
        preprocess=Preprocess(224, 224, "bilinear"),
        signature={"architecture": "vit_giant_patch14_224", "reg_tokens": 8},
    ),
    KnownEncoder(
        name="virchow", repos=("paige-ai/Virchow",), backend="timm", dim=2560,
        description="Virchow (ViT-H/14, SwiGLU), Vorontsov et al. 2024",
        source="huggingface.co/paige-ai/Virchow model card: timm.create_model('hf-hub:paige-ai/Virchow', "
               "mlp_layer=SwiGLUPacked, act_layer=SiLU); transform from pretrained_cfg (224, bicubic, crop_pct 1, "
               "ImageNet mean/std); embedding = concat(output[:, 0], output[:, 1:].mean(1)), 2560-d",
        timm_kwargs=dict(_SWIGLU), pooling="cls+mean", preprocess=Preprocess(224, 224, "bicubic"),
        tags=("virchow_v1",), signature={"architecture": "vit_huge_patch14_224", "reg_tokens": 0},
    ),
    KnownEncoder(
        name="virchow2", repos=("paige-ai/Virchow2",), backend="timm", dim=2560,
        description="Virchow2 (ViT-H/14, 4 register tokens, SwiGLU), Zimmermann et al. 2024",
        source="huggingface.co/paige-ai/Virchow2 model card: timm.create_model('hf-hub:paige-ai/Virchow2', "
               "mlp_layer=SwiGLUPacked, act_layer=SiLU); transform from pretrained_cfg (224, bicubic, crop_pct 1, "
               "ImageNet mean/std); tokens 1-4 are registers: embedding = concat(output[:, 0], "
               "output[:, 5:].mean(1)), 2560-d",
        timm_kwargs=dict(_SWIGLU), pooling="cls+mean", preprocess=Preprocess(224, 224, "bicubic"),
        tags=("virchow_v2",), signature={"architecture": "vit_huge_patch14_224", "reg_tokens": 4},
    ),
    KnownEncoder(
        name="h-optimus-0", repos=("bioptimus/H-optimus-0",), backend="timm", dim=1536,
        description="H-optimus-0 (ViT-g/14, 4 register tokens), Bioptimus 2024",
        source="huggingface.co/bioptimus/H-optimus-0 model card: timm.create_model('hf-hub:bioptimus/H-optimus-0', "
               "init_values=1e-5, dynamic_img_size=False); ToTensor + Normalize(mean=(0.707223, 0.578729, 0.703617), "
               "std=(0.211883, 0.230117, 0.177517)) on 224x224 tiles at 0.5 um/px; CLS token (model(x))",
        timm_kwargs={"init_values": 1e-5, "dynamic_img_size": False},
        card_preprocess=True, preprocess=_HOPTIMUS,
        signature={"architecture": "vit_giant_patch14_reg4_dinov2"},
    ),
    KnownEncoder(
        name="h-optimus-1", repos=("bioptimus/H-optimus-1",), backend="timm", dim=1536,
        description="H-optimus-1 (ViT-g/14, 4 register tokens), Bioptimus 2025",
        source="huggingface.co/bioptimus/H-optimus-1 model card: as H-optimus-0 (init_values=1e-5, "
               "dynamic_img_size=False, the same mean/std)",
        timm_kwargs={"init_values": 1e-5, "dynamic_img_size": False},
        card_preprocess=True, preprocess=_HOPTIMUS,
    ),
    KnownEncoder(
        name="prov-gigapath", repos=("prov-gigapath/prov-gigapath",), backend="timm", dim=1536,
        description="Prov-GigaPath tile encoder (ViT-g/16, DINOv2), Xu et al. 2024",
        source="github.com/prov-gigapath/prov-gigapath demo/3_load_tile_encoder.py: "
               "timm.create_model('hf_hub:prov-gigapath/prov-gigapath'); Resize(256, bicubic), CenterCrop(224), "
               "ImageNet mean/std; output = model(x), 1536-d",
        card_preprocess=True, preprocess=Preprocess(256, 224, "bicubic"),
        signature={"architecture": "vit_giant_patch14_dinov2", "patch_size": 16, "depth": 40},
    ),
    KnownEncoder(
        name="phikon", repos=("owkin/phikon",), backend="transformers", dim=768,
        description="Phikon (ViT-B/16, iBOT), Filiot et al. 2023",
        source="huggingface.co/owkin/phikon model card: ViTModel + AutoImageProcessor; "
               "features = outputs.last_hidden_state[:, 0, :]",
        pooling="cls",
    ),
    KnownEncoder(
        name="phikon-v2", repos=("owkin/phikon-v2",), backend="transformers", dim=1024,
        description="Phikon-v2 (ViT-L/16, DINOv2), Filiot et al. 2024",
        source="huggingface.co/owkin/phikon-v2 model card: AutoModel (Dinov2Model) + AutoImageProcessor; "
               "features = outputs.last_hidden_state[:, 0, :]",
        pooling="cls",
    ),
]}


def lookup(name_or_repo: str) -> KnownEncoder | None:
    """The entry for a name (``virchow2``) or a hub repo id (``paige-ai/Virchow2``), case-insensitive."""
    key = name_or_repo.strip().lower()
    for enc in KNOWN_ENCODERS.values():
        if key == enc.name or key in (r.lower() for r in enc.repos):
            return enc
    return None


def match_known(config: dict, repo: str | None = None, folder_name: str | None = None) -> KnownEncoder | None:
    """The known model a timm hub ``config.json`` belongs to: by repo id, folder name, tag, then signature."""
    for key in (repo, folder_name):
        if key:
            hit = lookup(key) or next((e for e in KNOWN_ENCODERS.values()
                                       if key.lower() in (r.split("/")[-1].lower() for r in e.repos)), None)
            if hit is not None:
                return hit
    pretrained = config.get("pretrained_cfg") or {}
    tag = pretrained.get("tag")
    for enc in KNOWN_ENCODERS.values():
        if tag and tag in enc.tags:
            return enc
    args = {**{k: v for k, v in config.items() if not isinstance(v, dict)}, **(config.get("model_args") or {})}
    mean = tuple(round(float(m), 6) for m in pretrained.get("mean", ()))
    for enc in KNOWN_ENCODERS.values():
        sig = dict(enc.signature)
        if not sig or sig.pop("architecture") != config.get("architecture"):
            continue
        if all(args.get(k, 0) == v for k, v in sig.items()):
            if enc.name.startswith("h-optimus") and mean != enc.preprocess.mean:
                continue  # the DINOv2 giant architecture alone is not H-optimus: its own mean/std is
            return enc
    return None
