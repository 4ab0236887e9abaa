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

from pathlib import Path

import torch

from pathvlm.encoders.detect import (  # noqa: F401  (re-exported: the public names of image-only sources)
    IMAGE_USES, TEXT_TASKS, ImageOnlySource, cached_snapshot, describe_image_folder, image_folder_kind,
    image_only_folder, image_only_message,
)
from pathvlm.encoders.known import KnownEncoder, lookup
from pathvlm.errors import SourceError


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
