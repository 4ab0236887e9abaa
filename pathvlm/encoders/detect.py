"""Is a model source an image-only encoder, and which? (No model is built here.)

Used by ``create_clip`` (to refuse image-only models where a text tower is needed, with a message saying
what they can do) and by ``create_image_encoder`` (to load them). Hub forms look in the local
Hugging Face cache only, never download.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pathvlm.encoders.known import KNOWN_ENCODERS, lookup
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
