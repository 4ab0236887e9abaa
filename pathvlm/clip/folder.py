"""pathvlm's folder format for PathCLIP models, and model fingerprints.

A PathCLIP folder is open_clip's own ``local-dir`` layout, made self-contained:

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}  (open_clip's schema)
    open_clip_model.safetensors  the full state dict, fp32 unless saved otherwise
    config.json, tokenizer*.json, vocab.txt ...   the HF text tower's config and tokenizer
                                 (``text_cfg.hf_model_name`` is "." = this folder)
    pathvlm.json                 {"format": "pathclip", "name", "parent", "fingerprint", ...}

Models from transformers' ``CLIPModel`` (PLIP's format) are saved with ``save_pretrained``
plus the same ``pathvlm.json``. Save then load is bit-exact (tested).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 1
SELF = "."  # marker for "this folder" in text_cfg


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every tensor (name, dtype, shape, bytes) and the preprocessing config.

    Two models with the same fingerprint embed identically, so an index built with one can be
    searched with the other; anything else is refused.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    pre = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or getattr(model, "preprocess_cfg", {})
    h.update(json.dumps(pre, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def save_clip(model, tokenizer, out_dir: str | os.PathLike, name: str | None = None, extra: dict | None = None) -> Path:
    """Save a model from :func:`pathvlm.create_clip` as a folder that ``create_clip`` loads back.

    Written to a temporary sibling folder and renamed into place, so an interrupted save never
    leaves a half-written model where a complete one is expected.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if getattr(model, "is_image_only", False):
            raise ValueError("image-only encoders are loaded from their own folders; there is nothing to save")
        if getattr(model, "is_hf_clip", False):
            model.save_hf(tmp)
        elif hasattr(model, "save_folder"):  # CONCH, KEEP: their own published layout
            model.save_folder(tmp, tokenizer)
        else:
            _save_open_clip(model, tokenizer, tmp)
        meta = {
            "format": "pathclip",
            "format_version": FORMAT_VERSION,
            "name": name or getattr(model, "pathvlm_name", out.name),
            "parent": getattr(model, "pathvlm_source", None),
            "backend": "transformers" if getattr(model, "is_hf_clip", False) else getattr(model, "pathvlm_backend",
                                                                                           "open_clip"),
            "fingerprint": model_fingerprint(model),
        }
        meta.update(extra or {})
        (tmp / "pathvlm.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            backup = out.with_name(out.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            tmp.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_open_clip(model, tokenizer, folder: Path) -> None:
    from safetensors.torch import save_file

    cfg = copy.deepcopy(getattr(model, "pathvlm_cfg", None))
    if cfg is None:
        raise ValueError("model has no architecture config attached; create it with pathvlm.create_clip")
    text_cfg = cfg["model_cfg"].get("text_cfg", {})
    if "hf_model_name" in text_cfg:
        model.text.config.save_pretrained(folder)  # the HF text tower's architecture
        text_cfg["hf_model_name"] = SELF
        text_cfg["hf_tokenizer_name"] = SELF
        text_cfg.pop("hf_model_pretrained", None)
        hf_tok = getattr(tokenizer, "tokenizer", None)
        if hf_tok is not None:
            hf_tok.save_pretrained(folder)
    cfg["preprocess_cfg"] = dict(model.visual.preprocess_cfg)
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})


def read_meta(folder: str | os.PathLike) -> dict:
    p = Path(folder) / "pathvlm.json"
    return json.loads(p.read_text()) if p.exists() else {}
