"""Original-format LLaVA checkpoints (Quilt-LLaVA v1.5, LLaVA-Med v1.5 Mistral, PathGen-LLaVA, LLaVA v1.5)
converted to transformers' ``LlavaForConditionalGeneration``.

The original layout (haotian-liu/LLaVA's training code): ``config.json`` with ``model_type`` ``llava`` /
``llava_llama`` / ``llava_mistral``, the language model's fields flat, plus ``mm_vision_tower`` (a CLIP folder or
hub id), ``mm_hidden_size``, ``mm_projector_type: mlp2x_gelu``, ``mm_vision_select_layer``,
``mm_vision_select_feature``, ``image_aspect_ratio``, ``mm_use_im_start_end``, ``mm_use_im_patch_token``; shards
(``pytorch_model-*.bin`` or ``model-*.safetensors`` with their index) holding ``model.*``, ``lm_head.weight`` and
``model.mm_projector.{0,2}`` but no vision weights; a sentencepiece ``tokenizer.model``.

The conversion (streamed shard by shard, so a 7B model needs about one shard of memory):

- ``model.X`` -> ``model.language_model.X``; ``lm_head.weight`` stays; ``model.mm_projector.0/2`` ->
  ``model.multi_modal_projector.linear_1/2``; ``rotary_emb.inv_freq`` buffers are dropped;
- the vision tower's ``vision_model.*`` (from the CLIP folder, or from the checkpoint itself when it was trained
  with an unfrozen tower: ``model.vision_tower.vision_tower.vision_model.*``) -> ``model.vision_tower.*``;
- (these are transformers-5 parameter names; the files use the llava-hf hub names, :func:`hub_name`);
- an ``<image>`` token is added to the tokenizer (LLaVA uses the id -200 outside the vocabulary); its embedding and
  ``lm_head`` rows are the mean of the others and generation suppresses it, so no output can differ;
- ``mm_vision_select_layer`` -> ``vision_feature_layer``; ``patch`` / ``cls_patch`` -> ``default`` / ``full``;
- the processor is ``LlavaProcessor`` with the CLIP folder's preprocessing and, for ``image_aspect_ratio: pad``,
  LLaVA's pad-to-square in the image mean colour; the chat template is LLaVA's conversation template
  (:mod:`pathvlm.vlm.llava_templates`); ``pathvlm_llava.json`` records the source and tells pathvlm to tokenise
  as LLaVA does (:mod:`pathvlm.vlm.llava_processing`).

``load_vlm(FOLDER)`` converts once into ``$PATHVLM_HOME/models/llava/`` (keyed by the checkpoint's files) and
loads the result; ``pathvlm convert llava SRC OUT`` writes a permanent folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from pathvlm.errors import PathVLMError, SourceError
from pathvlm.paths import home
from pathvlm.vlm.llava_templates import DEFAULT_TEMPLATE, chat_template, get_template

MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
UNSUPPORTED_TYPES = {"llava_mpt": "LLaVA on MPT (custom remote code) is not supported",
                     "llava_mixtral": "LLaVA on Mixtral is not supported", "llava_qwen": "LLaVA on Qwen is not supported"}
IMAGE_TOKEN = "<image>"
LLAVA_EXTRA_TOKENS = {"patch": "<im_patch>", "start": "<im_start>", "end": "<im_end>"}
SHARD_BYTES = 2 * 1024 ** 3
FORMAT_VERSION = 1
# LLaVA's flat config keys that belong to the language model (the rest is LLaVA's or training state)
LM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
           "attention_bias", "attention_dropout", "sliding_window", "bos_token_id", "eos_token_id", "pad_token_id",
           "initializer_range", "pretraining_tp", "tie_word_embeddings", "head_dim", "mlp_bias")


# ------------------------------------------------------------------ reading
def read_config(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def is_original_llava(folder: str | Path) -> bool:
    """True for a folder in LLaVA's own training layout (not transformers' ``LlavaForConditionalGeneration``)."""
    cfg = read_config(Path(folder))
    if not cfg:
        return False
    if cfg.get("model_type") in UNSUPPORTED_TYPES:
        return True  # read_original names why
    return cfg.get("model_type") in MODEL_TYPES and "text_config" not in cfg and (
        "mm_vision_tower" in cfg or "mm_hidden_size" in cfg or cfg.get("model_type") != "llava")


@dataclass
class OriginalLlava:
    folder: Path
    config: dict
    family: str  # "llama" or "mistral"
    template: str

    @property
    def name(self) -> str:
        return self.folder.name


def read_original(folder: str | Path, template: str | None = None) -> OriginalLlava:
    """Read and check an original-format LLaVA folder; the error names anything pathvlm cannot convert."""
    folder = Path(os.path.expanduser(str(folder)))
    cfg = read_config(folder)
    if cfg is None:
        raise SourceError(f"{folder}: no readable config.json")
    if cfg.get("model_type") in UNSUPPORTED_TYPES:
        raise SourceError(f"{folder}: {UNSUPPORTED_TYPES[cfg['model_type']]} (supported: model_type "
                          f"{', '.join(MODEL_TYPES)})")
    if (folder / "non_lora_trainables.bin").exists() or (folder / "adapter_config.json").exists():
        raise SourceError(f"{folder}: a LoRA-only LLaVA checkpoint (adapter_config.json / non_lora_trainables.bin) "
                          "that needs its base model; merge it first with LLaVA's scripts/merge_lora_weights.py "
                          "(--model-path THIS --model-base BASE --save-model-path MERGED), then use MERGED")
    family = MODEL_TYPES.get(cfg.get("model_type"))
    if family is None:
        raise SourceError(f"{folder}: model_type {cfg.get('model_type')!r} is not an original LLaVA checkpoint "
                          f"({', '.join(MODEL_TYPES)})")
    problems = []
    if "mm_vision_tower" not in cfg and not cfg.get("vision_tower"):
        problems.append("config.json names no vision tower (mm_vision_tower)")
    proj = cfg.get("mm_projector_type", "linear")
    if proj != "mlp2x_gelu":
        problems.append(f"mm_projector_type {proj!r}: only LLaVA-1.5's 'mlp2x_gelu' maps onto transformers' "
                        "LlavaForConditionalGeneration (LLaVA v1.0 'linear' projectors do not)")
    aspect = cfg.get("image_aspect_ratio", "square")
    if aspect not in ("pad", "square", None, "resize"):
        problems.append(f"image_aspect_ratio {aspect!r} (LLaVA-NeXT 'anyres' tiling) is not supported; "
                        "LLaVA-1.5 checkpoints use 'pad'")
    if cfg.get("mm_vision_select_feature", "patch") not in ("patch", "cls_patch"):
        problems.append(f"mm_vision_select_feature {cfg.get('mm_vision_select_feature')!r}")
    if cfg.get("mm_patch_merge_type", "flat") != "flat":
        problems.append(f"mm_patch_merge_type {cfg.get('mm_patch_merge_type')!r} (only 'flat')")
    if cfg.get("mm_resampler_type"):
        problems.append(f"mm_resampler_type {cfg.get('mm_resampler_type')!r} (no resampler support)")
    if problems:
        raise SourceError(f"{folder}: cannot convert this LLaVA checkpoint: " + "; ".join(problems))
    template = template or DEFAULT_TEMPLATE[family]
    get_template(template)
    return OriginalLlava(folder, cfg, family, template)


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's weight files, from its shard index when there is one."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index).exists():
            try:
                names = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise SourceError(f"{folder / index}: not a shard index ({e})") from None
            missing = [n for n in names if not (folder / n).exists()]
            if missing:
                raise SourceError(f"{folder}: the shard index lists {', '.join(missing)}, which is not in the folder "
                                  "(an incomplete download?)")
            return [folder / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).exists():
            return [folder / single]
    raise SourceError(f"{folder}: no weights (model*.safetensors or pytorch_model*.bin, with their index)")


def iter_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of one weight file; ``.bin`` files are read with ``weights_only=True`` (never unpickled code)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        except Exception as e:
            raise SourceError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        return
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # pre-zipfile (torch < 1.6) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SourceError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise SourceError(f"{path}: holds a {type(state).__name__}, not a state dict")
    yield from state.items()


def hub_name(key: str) -> str:
    """transformers-5 parameter name -> the name in the file: the llava-hf hub layout (``language_model.model.*``,
    ``language_model.lm_head``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``), which transformers 4.4x
    and 5 both load."""
    for internal, stored in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                             ("model.vision_tower.", "vision_tower.vision_model."),
                             ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(internal):
            return stored + key[len(internal):]
    raise PathVLMError(f"no stored name for parameter {key}")


def map_key(key: str) -> str | None:
    """An original LLaVA state-dict key -> its ``LlavaForConditionalGeneration`` key (None: dropped)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    if key.startswith("model.mm_projector."):
        rest = key[len("model.mm_projector."):]
        idx, _, param = rest.partition(".")
        linear = {"0": "linear_1", "2": "linear_2"}.get(idx)
        return f"model.multi_modal_projector.{linear}.{param}" if linear else None
    if key.startswith("model.vision_tower.vision_tower."):  # checkpoints trained with the tower unfrozen
        rest = key[len("model.vision_tower.vision_tower."):]
        if rest.startswith("vision_model.") and "position_ids" not in rest:
            return "model.vision_tower." + rest[len("vision_model."):]
        return None
    if key == "lm_head.weight":
        return key
    if key.startswith("model."):
        return "model.language_model." + key[len("model."):]
    return None


# ------------------------------------------------------------------ the vision tower
def resolve_vision_tower(llava: OriginalLlava, override: str | Path | None = None) -> Path:
    """The CLIP folder of ``mm_vision_tower``: ``override``, a path (absolute, or inside the checkpoint), or a
    hub id found in the offline Hugging Face cache."""
    spec = llava.config.get("mm_vision_tower") or llava.config.get("vision_tower")
    if override is not None:
        path = Path(os.path.expanduser(str(override)))
        if not (path / "config.json").exists():
            raise SourceError(f"--vision-tower {override}: not a CLIP folder (no config.json there)")
        return path
    tried = []
    candidates = [Path(os.path.expanduser(spec))]
    if not Path(spec).is_absolute():
        candidates.append(llava.folder / spec)
    candidates.append(llava.folder / Path(spec).name)
    for c in candidates:
        tried.append(str(c))
        if (c / "config.json").exists():
            return c
    if "/" in spec and not Path(spec).is_absolute() and spec.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            snap = Path(snapshot_download(spec, local_files_only=True))
            if (snap / "config.json").exists():
                return snap
        except Exception:  # not in the cache
            pass
        tried.append(f"the Hugging Face cache ({spec})")
    raise SourceError(
        f"{llava.folder}: its vision tower {spec!r} (mm_vision_tower) was not found: looked in "
        f"{'; '.join(tried)}. The checkpoint holds no vision weights; get the CLIP folder "
        f"(e.g. `huggingface-cli download {spec}` on a machine with internet, then copy the cache) or pass it "
        f"explicitly: `pathvlm convert llava {llava.folder} OUT --vision-tower DIR`, "
        f"`pathvlm chat --model {llava.folder} --vision-tower DIR`, or load_reasoner(..., vision_tower=DIR)")


def _vision_config(tower: Path) -> dict:
    cfg = read_config(tower) or {}
    if cfg.get("model_type") == "clip":
        vc = dict(cfg.get("vision_config") or {})
    elif cfg.get("model_type") == "clip_vision_model":
        vc = dict(cfg)
    else:
        raise SourceError(f"{tower}: a {cfg.get('model_type')!r} folder, not a CLIP vision tower "
                          "(LLaVA-1.5 checkpoints use openai/clip-vit-large-patch14-336 or a CLIP fine-tune of it)")
    vc["model_type"] = "clip_vision_model"
    for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        vc.pop(k, None)
    return vc


def _tower_tensors(tower: Path) -> Iterator[tuple[str, torch.Tensor]]:
    files = weight_files(tower)
    for path in files:
        for key, value in iter_tensors(path):
            if key.startswith("vision_model.") and not key.endswith("position_ids"):
                yield "model.vision_tower." + key[len("vision_model."):], value


def _image_processor(tower: Path, aspect: str):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    try:
        pre = json.loads((tower / "preprocessor_config.json").read_text())
    except (OSError, ValueError):
        raise SourceError(f"{tower}: no preprocessor_config.json (the CLIP preprocessing LLaVA uses)") from None
    size, crop = pre.get("size", 336), pre.get("crop_size", 336)
    size = size.get("shortest_edge", size) if isinstance(size, dict) else size
    crop = crop.get("height", crop) if isinstance(crop, dict) else crop
    return LlavaImageProcessorPil(
        size={"shortest_edge": int(size)}, crop_size={"height": int(crop), "width": int(crop)},
        image_mean=pre.get("image_mean"), image_std=pre.get("image_std"), resample=pre.get("resample", 3),
        do_center_crop=pre.get("do_center_crop", True), do_resize=pre.get("do_resize", True),
        do_normalize=pre.get("do_normalize", True), do_rescale=pre.get("do_rescale", True),
        rescale_factor=pre.get("rescale_factor", 1 / 255), do_convert_rgb=True, do_pad=aspect == "pad")


# ------------------------------------------------------------------ writing
def _hf_config(llava: OriginalLlava, vision: dict, vocab: int, image_token_id: int, pad_id: int):
    from transformers import AutoConfig, LlavaConfig

    cfg = llava.config
    text = {k: cfg[k] for k in LM_KEYS if k in cfg}
    text.update(model_type=llava.family, vocab_size=vocab, tie_word_embeddings=False, pad_token_id=pad_id)
    scaling, theta = text.pop("rope_scaling", None), text.pop("rope_theta", 10000.0)
    rope = {"rope_type": "default", "rope_theta": theta}
    if isinstance(scaling, dict):  # transformers 4's rope_scaling -> transformers 5's rope_parameters
        rope = {**{k: v for k, v in scaling.items() if k != "type"},
                "rope_type": scaling.get("rope_type") or scaling.get("type") or "default", "rope_theta": theta}
    text["rope_parameters"] = rope
    select = cfg.get("mm_vision_select_feature", "patch")
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    vis = AutoConfig.for_model(**vision)
    if cfg.get("mm_hidden_size") not in (None, vis.hidden_size):
        raise SourceError(f"{llava.folder}: mm_hidden_size {cfg['mm_hidden_size']} does not match the vision "
                          f"tower's hidden_size {vis.hidden_size}: wrong --vision-tower?")
    return LlavaConfig(text_config=AutoConfig.for_model(**text), vision_config=vis, image_token_index=image_token_id,
                       vision_feature_layer=int(cfg.get("mm_vision_select_layer", -2)),
                       vision_feature_select_strategy="default" if select == "patch" else "full",
                       image_seq_length=patches + (0 if select == "patch" else 1), projector_hidden_act="gelu",
                       multimodal_projector_bias=True, tie_word_embeddings=False)


def _tokenizer(llava: OriginalLlava):
    from pathvlm.imports import require_package
    from transformers import AutoTokenizer

    if not any((llava.folder / f).exists() for f in ("tokenizer.json", "tokenizer.model")):
        raise SourceError(f"{llava.folder}: no tokenizer (tokenizer.model or tokenizer.json)")
    if not (llava.folder / "tokenizer.json").exists():
        require_package("sentencepiece", extra="reasoner", pip_name="sentencepiece")
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    try:  # the tokenizer loader also reads config.json, whose flat LLaVA keys transformers 5 warns about
        hf_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(llava.folder))
    except Exception as e:
        raise SourceError(f"{llava.folder}: could not read the tokenizer ({type(e).__name__}: {e})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # LLaVA's builder adds these (special) before resizing the embeddings: keep its ids
    added = []
    if llava.config.get("mm_use_im_patch_token", True):
        added.append(LLAVA_EXTRA_TOKENS["patch"])
    if llava.config.get("mm_use_im_start_end", False):
        added += [LLAVA_EXTRA_TOKENS["start"], LLAVA_EXTRA_TOKENS["end"]]
    if added:
        tok.add_tokens(added, special_tokens=True)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token  # LLaVA trains with pad = unk
    return tok


def _mean_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    if n <= t.shape[0]:
        return t
    extra = t.float().mean(0, keepdim=True).to(t.dtype).expand(n - t.shape[0], -1)
    return torch.cat([t, extra], 0)


class _ShardWriter:
    """Streams tensors into ``model-0000K-of-0000N.safetensors`` files of at most ``limit`` bytes."""

    def __init__(self, folder: Path, limit: int = SHARD_BYTES):
        self.folder, self.limit = folder, limit
        self.current: dict = {}
        self.size = 0
        self.files: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, key: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.current and self.size + nbytes > self.limit:
            self.flush()
        self.current[hub_name(key)] = t.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.current:
            return
        path = self.folder / f"part-{len(self.files):05d}.safetensors"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.files.append((path, list(self.current)))
        self.current, self.size = {}, 0

    def finish(self) -> None:
        self.flush()
        n = len(self.files)
        if n == 1:
            self.files[0][0].rename(self.folder / "model.safetensors")
            return
        weight_map = {}
        for k, (path, keys) in enumerate(self.files):
            name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            path.rename(self.folder / name)
            weight_map.update({key: name for key in keys})
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2))


def convert(src: str | Path, out: str | Path, vision_tower: str | Path | None = None, template: str | None = None,
            dtype: torch.dtype | None = None, progress: bool = True) -> Path:
    """Write ``out``: a transformers ``LlavaForConditionalGeneration`` folder (weights, config, processor with
    LLaVA's chat template, generation config) converted from the original-format checkpoint ``src``."""
    llava = read_original(src, template)
    tower = resolve_vision_tower(llava, vision_tower)
    vision = _vision_config(tower)
    tokenizer = _tokenizer(llava)
    vocab_src = int(llava.config["vocab_size"])
    vocab = max(vocab_src, len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = _hf_config(llava, vision, vocab, image_token_id, tokenizer.pad_token_id)
    out = Path(os.path.expanduser(str(out)))
    if out.resolve() == llava.folder.resolve():
        raise SourceError(f"{out}: the output folder is the checkpoint itself; choose another folder")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "pathvlm_llava.json").exists())):
        raise SourceError(f"{out} exists and is not an earlier conversion; choose a new or empty folder (nothing "
                          "there is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        writer = _ShardWriter(tmp)
        seen, has_tower, lm_dtype = set(), False, None
        files = weight_files(llava.folder)
        if progress:
            from tqdm.auto import tqdm

            files = tqdm(files, desc=f"converting {llava.name}", unit="shard")
        for path in files:
            for key, value in iter_tensors(path):
                new = map_key(key)
                if new is None:
                    continue
                if new in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
                    if value.shape[0] != vocab_src:
                        raise SourceError(f"{path}: {key} has {value.shape[0]} rows but config.json says vocab_size "
                                          f"{vocab_src}")
                    value = _mean_rows(value, vocab)
                    lm_dtype = dtype or value.dtype
                has_tower |= new.startswith("model.vision_tower.")
                writer.add(new, value.to(dtype) if dtype is not None else value)
                seen.add(new)
        if not has_tower:
            for key, value in _tower_tensors(tower):
                writer.add(key, value.to(dtype) if dtype is not None else value)
                seen.add(key)
        _check_coverage(config, seen, llava.folder, tower)
        writer.finish()
        config.dtype = str(lm_dtype or torch.float16).replace("torch.", "")
        config.save_pretrained(tmp)
        _write_generation_config(tmp, llava, tokenizer, image_token_id)
        _write_processor(tmp, llava, tower, tokenizer, config)
        (tmp / "pathvlm_llava.json").write_text(json.dumps(sidecar(llava, tower), indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _check_coverage(config, seen: set, folder: Path, tower: Path) -> None:
    """Every parameter of the target model is written, and nothing else (checked on the meta device)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        expected = set(LlavaForConditionalGeneration(config).state_dict())
    missing, unexpected = sorted(expected - seen), sorted(seen - expected)
    if missing or unexpected:
        raise PathVLMError(f"{folder} + {tower}: the converted weights do not fit LlavaForConditionalGeneration "
                           f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]})")


def _write_generation_config(folder: Path, llava: OriginalLlava, tokenizer, image_token_id: int) -> None:
    from transformers import GenerationConfig

    extra = [tokenizer.convert_tokens_to_ids(t) for t in LLAVA_EXTRA_TOKENS.values() if t in tokenizer.get_vocab()]
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id,
                     suppress_tokens=sorted({image_token_id, *extra})).save_pretrained(folder)


def _write_processor(folder: Path, llava: OriginalLlava, tower: Path, tokenizer, config) -> None:
    from pathvlm.vlm.llava_processing import LlavaOriginalProcessor

    im_start_end = bool(llava.config.get("mm_use_im_start_end", False))
    processor = LlavaOriginalProcessor(
        image_processor=_image_processor(tower, llava.config.get("image_aspect_ratio") or "square"),
        tokenizer=tokenizer, patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, num_additional_image_tokens=1,
        chat_template=chat_template(llava.template, im_start_end=im_start_end))
    processor.llava_info = sidecar(llava, tower)
    processor.save_pretrained(folder)


def sidecar(llava: OriginalLlava, tower: Path) -> dict:
    import transformers

    from pathvlm import __version__

    return {"format": "llava-original", "format_version": FORMAT_VERSION, "source": str(llava.folder),
            "source_model_type": llava.config.get("model_type"), "family": llava.family, "template": llava.template,
            "vision_tower": str(tower), "mm_vision_tower": llava.config.get("mm_vision_tower"),
            "image_aspect_ratio": llava.config.get("image_aspect_ratio"),
            "mm_use_im_start_end": bool(llava.config.get("mm_use_im_start_end", False)),
            "tokenisation": "llava.mm_utils.tokenizer_image_token (text on each side of <image> tokenised apart)",
            "converted_with": f"pathvlm {__version__}, transformers {transformers.__version__}"}


# ------------------------------------------------------------------ the cache
def fingerprint(llava: OriginalLlava, tower: Path, template: str) -> str:
    """Changes when the checkpoint's or the tower's files change (names, sizes, times), or the template."""
    h = hashlib.sha256()
    h.update(json.dumps(llava.config, sort_keys=True).encode())
    for folder in (llava.folder, tower):
        for p in sorted(folder.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    h.update(f"{template}:{FORMAT_VERSION}".encode())
    return h.hexdigest()[:12]


def cache_dir() -> Path:
    return home() / "models" / "llava"


def ensure_converted(src: str | Path, vision_tower: str | Path | None = None, template: str | None = None,
                     say=print) -> Path:
    """The converted folder for ``src`` in the cache, converting it the first time."""
    llava = read_original(src, template)
    tower = resolve_vision_tower(llava, vision_tower)
    out = cache_dir() / f"{llava.name}-{fingerprint(llava, tower, llava.template)}"
    if (out / "pathvlm_llava.json").exists() and (out / "config.json").exists():
        return out
    say(f"converting the original LLaVA checkpoint {llava.folder} for transformers (once; cached in {out}) ...")
    return convert(llava.folder, out, vision_tower=tower, template=llava.template)
