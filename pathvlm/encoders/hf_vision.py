"""transformers vision-backbone folders (``save_pretrained``): Phikon (``ViTModel``), Phikon-v2
(``Dinov2Model``) and others of the same kinds, loaded without remote code.

The model cards embed with ``outputs.last_hidden_state[:, 0, :]`` after the folder's own
``AutoImageProcessor``; the processor is used as the transform, so pixels match the reference exactly.
"""
from __future__ import annotations

from pathlib import Path

from pathvlm.errors import SourceError

# model_type -> transformers class name (vision backbones whose last_hidden_state[:, 0] is the CLS token)
VISION_BACKBONES = {"vit": "ViTModel", "dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel",
                    "vit_msn": "ViTMSNModel", "deit": "DeiTModel", "beit": "BeitModel"}


class ProcessorTransform:
    """PIL image -> [3, H, W] tensor through a transformers image processor (picklable for DataLoader workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def load_hf_vision(folder: Path, model_type: str):
    import transformers
    from transformers import AutoImageProcessor

    cls = getattr(transformers, VISION_BACKBONES[model_type], None)
    if cls is None:
        raise SourceError(f"{folder}: this transformers version has no {VISION_BACKBONES[model_type]}")
    # the ViT pooler (dense + tanh) is not part of the embedding: Phikon's card loads without it
    extra = {"add_pooling_layer": False} if model_type in ("vit", "deit") else {}
    try:
        model = cls.from_pretrained(str(folder), trust_remote_code=False, **extra)
    except Exception as e:
        raise SourceError(f"{folder}: could not load the {VISION_BACKBONES[model_type]} "
                          f"({type(e).__name__}: {str(e)[:300]})") from None
    if not (folder / "preprocessor_config.json").exists():
        raise SourceError(f"{folder}: no preprocessor_config.json (the model card's AutoImageProcessor settings); "
                          "copy it from the model's hub repo into the folder")
    processor = AutoImageProcessor.from_pretrained(str(folder), trust_remote_code=False)
    model.eval()
    cfg = {"processor": type(processor).__name__, **{k: v for k, v in processor.to_dict().items()
                                                   if k in ("size", "crop_size", "image_mean", "image_std", "resample",
                                                            "do_center_crop", "do_resize", "rescale_factor")}}
    crop = processor.to_dict().get("crop_size") or processor.to_dict().get("size") or {}
    cfg["crop"] = crop.get("height", crop.get("shortest_edge", 224)) if isinstance(crop, dict) else int(crop)
    return model, ProcessorTransform(processor), cfg
