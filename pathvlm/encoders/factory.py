"""``create_image_encoder(source) -> (encoder, preprocess)``: any model pathvlm can embed images with.

Image-only foundation models (UNI, UNI2-h, Virchow, Virchow2, H-optimus-0/1, Prov-GigaPath,
Phikon, Phikon-v2, any timm hub folder or transformers ViT/DINOv2 folder) come back as an
:class:`~pathvlm.encoders.model.ImageEncoder`; every CLIP source ``create_clip`` takes comes back
as the CLIP model itself. Both have ``encode_image(pixels, normalize=False)`` and
``visual.preprocess_cfg``, which is all that index building, image search, probes and few-shot use.

Sources, besides everything ``create_clip`` accepts:

- a folder (or ``local-dir:FOLDER``) in timm's hub layout or a transformers ViT / DINOv2 folder;
- ``hf-hub:org/repo`` or ``hf:org/repo`` found in the local Hugging Face cache;
- ``NAME:FOLDER`` with a known model's name (``virchow2:/models/v2``) when the folder's own
  files do not say which model it is (see ``pathvlm models``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pathvlm.encoders.known import KNOWN_ENCODERS, KnownEncoder, lookup
from pathvlm.errors import SourceError

HF_HUB, HF, LOCAL_DIR = "hf-hub:", "hf:", "local-dir:"
TEXT_TASKS = "zero-shot classification, text search or text-to-image retrieval"
IMAGE_USES = ("`pathvlm index build --model ...`, `pathvlm search INDEX --image FILE`, and the linear_probe, "
              "few_shot, retrieval (image-to-image) and stain_robustness eval tasks")


class ImageOnlySource(SourceError):
    """The source is an image-only encoder where a text tower is needed."""


def image_only_message(source: str, what: str) -> str:
    return (f"'{source}' is an image-only encoder ({what}): it has no text tower, so it cannot do {TEXT_TASKS}. "
            f"Use it where an image embedding is enough: {IMAGE_USES}.")


def create_image_encoder(source: str, device: str | torch.device = "cpu", precision: str = "fp32",
                         text_tower: str | None = None):
    """An image embedder for ``source``: ``(model, preprocess)``, the model in eval mode."""
    from pathvlm.clip.factory import _dtype, create_clip

    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty model source; try 'pathclip-nano' (see `pathvlm models`)")
    source = source.strip()
    found = image_only_folder(source)
    if found is None:
        model, preprocess, _ = create_clip(source, device=device, precision=precision, text_tower=text_tower)
        return model, preprocess
    folder, kind, known, repo = found
    encoder, preprocess = load_image_folder(folder, kind, known, repo)
    encoder.pathvlm_source = source
    encoder.to(device=device, dtype=_dtype(precision))
    encoder.eval()
    return encoder, preprocess


def load_image_folder(folder: Path, kind: str, known: KnownEncoder | None = None, repo: str | None = None):
    from pathvlm.encoders.model import ImageEncoder, eval_transform

    if kind == "timm":
        from pathvlm.encoders.timm_hub import load_timm_folder

        backbone, known, pre = load_timm_folder(folder, repo=repo, known=known)
        pooling = known.pooling if known is not None else "timm"
        if pooling == "timm" and getattr(backbone, "global_pool", "token") in ("", None):
            pooling = "cls"  # a headless ViT without pooling returns every token: embed with its CLS
        name = known.name if known is not None else folder.name
        encoder = ImageEncoder(backbone, "timm", pooling, pre, name, known=known.name if known else None)
        return encoder, eval_transform(pre)
    from pathvlm.encoders.hf_vision import load_hf_vision

    backbone, transform, pre = load_hf_vision(folder, kind)
    known = known or (lookup(repo) if repo else None) or lookup(folder.name)
    name = known.name if known is not None else folder.name
    return ImageEncoder(backbone, "transformers", "cls", pre, name, known=known.name if known else None), transform


def image_only_folder(source: str):
    """``(folder, kind, known, repo)`` when ``source`` is an image-only model, else None.

    ``kind`` is "timm" or a transformers model_type. Hub forms look in the local cache only.
    """
    known = None
    head, sep, rest = source.partition(":")
    if sep and lookup(head) is not None and head.lower() in KNOWN_ENCODERS and not source.startswith(("hf", "local")):
        known, source = KNOWN_ENCODERS[head.lower()], rest
        folder = Path(os.path.expanduser(source))
        if not folder.is_dir():
            raise SourceError(f"{source}: no such folder (for the {known.description} weights)")
    repo = None
    if source.startswith((HF_HUB, HF)):
        repo = source.split(":", 1)[1]
        folder = cached_snapshot(repo)
        if folder is None:
            return None  # not cached: create_clip says how to get it
    elif source.startswith(LOCAL_DIR):
        folder = Path(os.path.expanduser(source[len(LOCAL_DIR):]))
    else:
        folder = Path(os.path.expanduser(source))
    if not folder.is_dir():
        return None
    kind = image_folder_kind(folder)
    if kind is None:
        if known is not None:
            raise SourceError(f"{folder}: not a {known.name} folder (expected config.json and its weights, as in "
                              f"the {known.repos[0]} hub repo)")
        return None
    return folder, kind, known, repo


def image_folder_kind(folder: Path) -> str | None:
    """"timm" for a timm hub folder, the model_type for a transformers vision backbone, else None."""
    from pathvlm.encoders.hf_vision import VISION_BACKBONES
    from pathvlm.encoders.timm_hub import is_timm_config

    if (folder / "open_clip_config.json").exists() or not (folder / "config.json").exists():
        return None
    try:
        config = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(config, dict):
        return None
    if is_timm_config(config):
        return "timm"
    if config.get("model_type") in VISION_BACKBONES:
        return config["model_type"]
    return None


def describe_image_folder(folder: Path, kind: str, repo: str | None = None) -> str:
    """"UNI2-h (ViT-H/14 ...)" or "a timm vit_large_patch16_224 folder", for messages."""
    from pathvlm.encoders.known import match_known
    from pathvlm.encoders.timm_hub import read_config

    if kind == "timm":
        config = read_config(folder)
        known = match_known(config, repo=repo, folder_name=folder.name)
        return known.description if known else f"a timm '{config.get('architecture')}' folder"
    known = (lookup(repo) if repo else None) or lookup(folder.name)
    return known.description if known else f"a transformers '{kind}' vision model"


def cached_snapshot(repo: str) -> Path | None:
    """The local Hugging Face cache's snapshot folder for ``repo`` (never downloads)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        return None
