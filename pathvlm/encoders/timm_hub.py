"""timm's hub layout: ``config.json`` (``architecture``, ``model_args``, ``pretrained_cfg``) plus
``model.safetensors`` or ``pytorch_model.bin`` (read with ``weights_only=True``, never unpickled).

What ``timm.create_model('hf-hub:...', pretrained=True, **kwargs)`` does, done from a local folder:
the constructor gets ``model_args`` (UNI's config keeps them at the top level instead), the known
model's kwargs (:mod:`pathvlm.encoders.known`), and whatever the weights themselves show that
the config does not say (a packed SwiGLU MLP, LayerScale, register tokens, no class-token
position): then every tensor must fit, with no missing or unexpected key.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pathvlm.encoders.known import KnownEncoder, Preprocess, match_known, timm_objects
from pathvlm.errors import SourceError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
# top-level keys of UNI-style configs that are constructor arguments
_FLAT_ARGS = ("img_size", "patch_size", "init_values", "dynamic_img_size", "num_classes", "global_pool",
              "reg_tokens", "no_embed_class", "mlp_ratio", "embed_dim", "depth", "num_heads")


def is_timm_config(config: dict) -> bool:
    return isinstance(config.get("architecture"), str) and "model_type" not in config


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise SourceError(f"{folder / 'config.json'}: not valid JSON ({e})") from None


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return folder / name
    raise SourceError(f"{folder}: config.json names a timm model ('{read_config(folder).get('architecture')}') "
                      f"but there is no weights file ({' or '.join(WEIGHT_FILES[:2])})")


def load_state_dict(path: Path) -> dict:
    """A checkpoint's tensors: safetensors, or a torch pickle read with ``weights_only=True``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:  # memory-mapped: a billion-parameter checkpoint is not read twice into memory
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                state = torch.load(str(path), map_location="cpu", weights_only=True)  # pre-zip format
    except Exception as e:
        raise SourceError(f"{path}: could not read the weights ({type(e).__name__}: {str(e)[:300]})") from None
    return unwrap_state_dict(state, path)


def unwrap_state_dict(state, path) -> dict:
    """``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and DDP's ``module.`` prefix removed."""
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and not torch.is_tensor(state.get(key)):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise SourceError(f"{path}: not a state dict of tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def constructor_kwargs(config: dict, known: KnownEncoder | None, state: dict | None) -> dict:
    """timm.create_model kwargs as ``timm.create_model('hf-hub:...', **card_kwargs)`` assembles them: the
    known model's default dimensions, the config's model_args over them, the card's kwargs over those;
    then what the weights show that none of these says."""
    kwargs = dict(known.defaults()) if known is not None else {}
    kwargs.update({k: config[k] for k in _FLAT_ARGS if k in config and not isinstance(config[k], dict)})
    kwargs.update(config.get("model_args") or {})
    kwargs["num_classes"] = 0  # embeddings only; a classifier in the checkpoint is dropped below
    if known is not None:
        kwargs.update(known.kwargs())
    if state is not None:
        kwargs.update(kwargs_from_weights(state, kwargs))
    return kwargs


def kwargs_from_weights(state: dict, kwargs: dict) -> dict:
    """Constructor arguments a ViT checkpoint's tensor shapes imply and the config may not state."""
    out = {}
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1] and "mlp_layer" not in kwargs:
        # a packed SwiGLU (fc1 holds gate and value): timm's SwiGLUPacked with SiLU, as Virchow and UNI2-h use
        out.update(timm_objects({"mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"}))
    if "blocks.0.ls1.gamma" in state and not kwargs.get("init_values"):
        out["init_values"] = 1e-5  # LayerScale present; the value is overwritten by the weights
    reg = state.get("reg_token")
    if reg is not None and "reg_tokens" not in kwargs:
        out["reg_tokens"] = int(reg.shape[1])
    return out


def build_timm(config: dict, kwargs: dict, device: str | torch.device = "cpu"):
    import timm

    arch = config["architecture"]
    if arch not in timm.list_models():
        raise SourceError(f"timm has no architecture '{arch}' (timm {timm.__version__}); upgrade timm if the "
                          "model card asks for a newer one")
    with torch.device(device):
        try:
            return timm.create_model(arch, pretrained=False, **kwargs)
        except TypeError as e:
            raise SourceError(f"timm could not build '{arch}' with {sorted(kwargs)} ({e})") from None


def load_timm_folder(folder: Path, repo: str | None = None, known: KnownEncoder | None = None):
    """(timm model with the folder's weights, matched known entry, preprocessing dict)."""
    config = read_config(folder)
    known = known or match_known(config, repo=repo, folder_name=folder.name)
    path = weights_file(folder)
    state = load_state_dict(path)
    kwargs = constructor_kwargs(config, known, state)
    state = {k: v for k, v in state.items() if not k.startswith("head.") or k.startswith("head.fc_norm")}
    model = build_timm(config, kwargs, device="meta")  # no random init of a billion parameters
    check_keys(model.state_dict(), state, path, config.get("architecture"))
    model.load_state_dict(state, strict=True, assign=True)
    _materialise_leftovers(model, config, kwargs)
    model.eval()
    return model, known, preprocess_for(config, known)


def check_keys(expected: dict, state: dict, path, what) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                         f"{tuple(expected[k].shape)} in the model)")
        raise SourceError(f"{path}: the weights do not fit {what}: " + "; ".join(parts))


def _materialise_leftovers(model, config, kwargs) -> None:
    """Buffers the checkpoint does not hold (none for timm ViTs) still sit on the meta device: rebuild them."""
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if not leftover:
        return
    fresh = build_timm(config, kwargs, device="cpu")
    buffers = dict(fresh.named_buffers())
    for name in leftover:
        if name not in buffers:
            raise SourceError(f"{config.get('architecture')}: parameter {name} is not in the checkpoint")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        module._buffers[attr] = buffers[name]


def preprocess_for(config: dict, known: KnownEncoder | None) -> dict:
    """The evaluation transform: the config's pretrained_cfg (timm's rule, as ``create_transform`` applies it:
    resize the shorter side to size / crop_pct, centre-crop to size), unless the known model's card
    prescribes another (Prov-GigaPath, H-optimus) or the config has none."""
    pre = config.get("pretrained_cfg") or {}
    size = int((pre.get("input_size") or [3, 224, 224])[-1])
    if known is not None and known.preprocess is not None and (known.card_preprocess or not pre):
        card = known.preprocess.as_dict()
        if pre.get("input_size"):  # the card's resize-to-crop ratio at the size the config states
            card["crop"], card["resize"] = size, int(round(size * card["resize"] / card["crop"]))
        return card
    crop_pct = float(pre.get("crop_pct") or 1.0)
    base = Preprocess()
    return Preprocess(resize=int(size / crop_pct), crop=size, interpolation=pre.get("interpolation") or "bicubic",
                      mean=tuple(pre.get("mean") or base.mean), std=tuple(pre.get("std") or base.std)).as_dict()
