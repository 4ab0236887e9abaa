"""The bundled-weights format: projector tensors plus LoRA factors, small enough to commit.

A bundle is one safetensors file. The projector's tensors (``model.multi_modal_projector.*`` for PathVLM
and LLaVA-style models, ``model.visual.merger.*`` for Qwen2/2.5-VL ones) replace the projector;
``lora.<module>.A`` / ``lora.<module>.B`` pairs are merged into ``<module>.weight`` as
``W += scale * B @ A`` (the LoRA update, with ``scale`` = alpha / r from the metadata), so loading
needs no peft and the merged model is a plain transformers model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pathvlm.errors import PathVLMError

# the image-to-LM projector, by architecture: PathVLM and LLaVA-style, then Qwen2-VL / Qwen2.5-VL (Patho-R1)
PROJECTOR_MODULES = ("model.multi_modal_projector", "model.visual.merger")


def projector_prefix(model) -> str:
    """The parameter-name prefix of ``model``'s projector (also through a peft wrapper), e.g.
    ``"model.multi_modal_projector."``."""
    names = {n.replace("base_model.model.", "", 1) for n, _ in model.named_modules()}
    for name in PROJECTOR_MODULES:
        if name in names:
            return name + "."
    raise PathVLMError(f"{type(model).__name__}: no image-to-LM projector found (looked for "
                       f"{', '.join(PROJECTOR_MODULES)})")


def apply_bundle(model, path: str | Path) -> dict:
    """Load projector tensors and merge LoRA factors from ``path`` into ``model`` (in place)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise PathVLMError(f"{path}: not a readable safetensors bundle ({e})") from None
    scale = float(meta.get("lora_scale", "1.0"))
    params = dict(model.named_parameters())
    prefix = projector_prefix(model)
    stray = [k for k in tensors if not k.startswith((prefix, "lora."))]
    if stray:
        raise PathVLMError(f"{path}: tensors {', '.join(stray[:3])} are neither LoRA factors nor this model's "
                           f"projector ({prefix}*): the bundle was made for another architecture")
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith(prefix):
                if key not in params or params[key].shape != value.shape:
                    raise PathVLMError(f"{path}: projector tensor {key} {tuple(value.shape)} does not fit this model")
                params[key].copy_(value.to(params[key].dtype))
        for key in tensors:
            if key.startswith("lora.") and key.endswith(".A"):
                module = key[len("lora."):-len(".A")]
                a, b = tensors[key].float(), tensors[f"lora.{module}.B"].float()
                weight = params.get(f"{module}.weight")
                if weight is None or weight.shape != (b.shape[0], a.shape[1]):
                    raise PathVLMError(f"{path}: LoRA factors for {module} do not fit this model")
                weight.add_((scale * b @ a).to(weight.dtype))
    return json.loads(meta.get("pathvlm", "{}"))


def export_bundle(peft_model, path: str | Path, info: dict | None = None, dtype=torch.float16) -> Path:
    """Write the projector and the LoRA factors of a peft-wrapped PathVLM to one safetensors file."""
    path = Path(path)
    tensors, scale = {}, None
    prefix = projector_prefix(peft_model)
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            base = name.replace("base_model.model.", "", 1)
            tensors[f"lora.{base}.A"] = module.lora_A["default"].weight.detach().to(dtype).contiguous()
            tensors[f"lora.{base}.B"] = module.lora_B["default"].weight.detach().to(dtype).contiguous()
            s = module.scaling["default"]
            if scale is not None and abs(s - scale) > 1e-9:
                raise PathVLMError("LoRA layers with different scales cannot share one bundle")
            scale = s
    for name, p in peft_model.named_parameters():
        if ".modules_to_save." in name and ".modules_to_save.default." not in name:
            continue  # other adapters' copies (e.g. TRL's "ref" policy during GRPO)
        if ".original_module." in name:
            continue
        clean = name.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "")
        if clean.startswith(prefix):
            tensors[clean] = p.detach().to(dtype).contiguous()
    meta = {"lora_scale": str(scale if scale is not None else 1.0), "pathvlm": json.dumps(info or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
