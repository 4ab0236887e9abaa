"""Tiny original-format LLaVA checkpoints, written exactly in their published on-disk layout.

Used by the fast tests (pathvlm's venv) and by ``make_llava_reference.py`` (a separate venv with the
reference LLaVA code and the old transformers it pins), so both sides read byte-identical folders.
Only torch, safetensors and json are imported: the same code runs under transformers 4.36 and 5.

Layouts, as published (config keys, file names, shard index and state-dict keys):

- ``llama`` (Quilt-LLaVA v1.5, PathGen-LLaVA, LLaVA v1.5): ``config.json`` with ``model_type: "llava"``
  (LLaVA <= 1.1 training code; 1.2 writes ``llava_llama``, as PathGen-LLaVA has), ``architectures:
  ["LlavaLlamaForCausalLM"]``, the flat Llama fields and the ``mm_*`` keys; weights in
  ``pytorch_model-0000K-of-0000N.bin`` shards with ``pytorch_model.bin.index.json`` (as liuhaotian/llava-v1.5-7b;
  newer saves use ``model-*.safetensors``, as PathGen-LLaVA); keys ``model.embed_tokens``,
  ``model.layers.*``, ``model.norm``, ``lm_head`` and ``model.mm_projector.{0,2}`` (``mlp2x_gelu``), no
  vision weights; the tokenizer is ``tokenizer.model`` (sentencepiece) + ``tokenizer_config.json`` +
  ``special_tokens_map.json``, no ``tokenizer.json``.
- ``mistral`` (LLaVA-Med v1.5 Mistral-7B): ``model_type: "llava_mistral"``,
  ``architectures: ["LlavaMistralForCausalLM"]``, flat Mistral fields, ``model-0000K-of-0000N.safetensors``
  with ``model.safetensors.index.json``; the same key names.
- the vision tower (``mm_vision_tower: "openai/clip-vit-large-patch14-336"``): a full transformers
  ``CLIPModel`` folder (text and vision towers, ``preprocessor_config.json``), as on the hub.

Weights are random but deterministic: each tensor comes from its own generator seeded by its name.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TOKENIZER_MODEL = HERE / "tiny_llama_tokenizer.model"  # sentencepiece BPE with LLaMA's trainer settings, 640 pieces
VISION_TOWER_REPO = "openai/clip-vit-large-patch14-336"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# the tiny dimensions; REAL_* are the published ones (used for key-coverage checks on the meta device)
TINY_LM = {"vocab_size": 640, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "max_position_embeddings": 4096}
TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
             "image_size": 32, "patch_size": 8, "projection_dim": 16,
             "text_hidden_size": 32, "text_layers": 2, "text_vocab_size": 100, "text_positions": 16}
REAL_LLAMA_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                 "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096}
REAL_MISTRAL_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 32768}
REAL_CLIP_L14_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "image_size": 336, "patch_size": 14, "projection_dim": 768,
                     "text_hidden_size": 768, "text_layers": 12, "text_vocab_size": 49408, "text_positions": 77}


# ------------------------------------------------------------------ state-dict layouts
def llava_lm_shapes(lm: dict, mm_hidden: int) -> dict[str, tuple]:
    """Keys and shapes of LLaVA's ``LlavaLlamaForCausalLM`` / ``LlavaMistralForCausalLM`` checkpoints."""
    h, inter, v = lm["hidden_size"], lm["intermediate_size"], lm["vocab_size"]
    kv = lm.get("num_key_value_heads", lm["num_attention_heads"]) * (h // lm["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h),
              "model.mm_projector.0.weight": (h, mm_hidden), "model.mm_projector.0.bias": (h,),
              "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,)}
    for i in range(lm["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    return shapes


def _clip_tower_shapes(prefix: str, d: int, inter: int, layers: int) -> dict[str, tuple]:
    shapes = {}
    for i in range(layers):
        p = f"{prefix}.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (d, d)
            shapes[p + f"self_attn.{proj}.bias"] = (d,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{ln}.weight"] = (d,)
            shapes[p + f"{ln}.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (inter, d), (inter,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (d, inter), (d,)
    return shapes


def clip_model_shapes(c: dict) -> dict[str, tuple]:
    """Keys and shapes of a transformers ``CLIPModel`` checkpoint (openai/clip-vit-large-patch14-336's layout)."""
    d, n_pos = c["hidden_size"], (c["image_size"] // c["patch_size"]) ** 2 + 1
    dt = c["text_hidden_size"]
    shapes = {"vision_model.embeddings.class_embedding": (d,),
              "vision_model.embeddings.patch_embedding.weight": (d, 3, c["patch_size"], c["patch_size"]),
              "vision_model.embeddings.position_embedding.weight": (n_pos, d),
              "vision_model.pre_layrnorm.weight": (d,), "vision_model.pre_layrnorm.bias": (d,),
              "vision_model.post_layernorm.weight": (d,), "vision_model.post_layernorm.bias": (d,),
              "visual_projection.weight": (c["projection_dim"], d),
              "text_model.embeddings.token_embedding.weight": (c["text_vocab_size"], dt),
              "text_model.embeddings.position_embedding.weight": (c["text_positions"], dt),
              "text_model.final_layer_norm.weight": (dt,), "text_model.final_layer_norm.bias": (dt,),
              "text_projection.weight": (c["projection_dim"], dt), "logit_scale": ()}
    shapes.update(_clip_tower_shapes("vision_model", d, c["intermediate_size"], c["num_hidden_layers"]))
    shapes.update(_clip_tower_shapes("text_model", dt, 2 * dt, c["text_layers"]))
    return shapes


def random_tensor(name: str, shape: tuple, seed: int) -> torch.Tensor:
    """A deterministic tensor for ``name``: norms near 1, biases near 0, matrices scaled by 1/sqrt(fan_in)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if name == "logit_scale":
        return torch.tensor(2.6592)
    if "norm" in name and name.endswith("weight"):
        return 1.0 + 0.1 * x
    if name.endswith("bias") or "class_embedding" in name or "position_embedding" in name:
        return 0.05 * x
    if "embed_tokens" in name or "token_embedding" in name:
        return x
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return x / max(fan_in, 1) ** 0.5


# ------------------------------------------------------------------ folders
def write_clip_tower(folder: Path, c: dict = TINY_CLIP, seed: int = 7) -> Path:
    """A ``CLIPModel`` folder (config.json, model.safetensors, preprocessor_config.json), as on the hub."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_pos_text = c["text_positions"]
    config = {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": c["projection_dim"],
        "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
        "text_config": {"model_type": "clip_text_model", "hidden_size": c["text_hidden_size"],
                        "intermediate_size": 2 * c["text_hidden_size"], "num_hidden_layers": c["text_layers"],
                        "num_attention_heads": 2, "vocab_size": c["text_vocab_size"],
                        "max_position_embeddings": n_pos_text, "projection_dim": c["projection_dim"],
                        "hidden_act": "quick_gelu", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": c["hidden_size"],
                          "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_hidden_layers"],
                          "num_attention_heads": c["num_attention_heads"], "image_size": c["image_size"],
                          "patch_size": c["patch_size"], "projection_dim": c["projection_dim"],
                          "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: random_tensor(k, s, seed).contiguous() for k, s in clip_model_shapes(c).items()}
    # the 2021 checkpoints still carry the position-id buffers
    tensors["vision_model.embeddings.position_ids"] = torch.arange((c["image_size"] // c["patch_size"]) ** 2 + 1)[None]
    tensors["text_model.embeddings.position_ids"] = torch.arange(n_pos_text)[None]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": c["image_size"], "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
        "resample": 3, "size": c["image_size"]}, indent=2))
    return folder


def llava_config(family: str, lm: dict, clip: dict, vision_tower: str, **overrides) -> dict:
    """The flat ``config.json`` LLaVA's training code writes (keys as in the published checkpoints)."""
    common = {
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "initializer_range": 0.02,
        "hidden_size": lm["hidden_size"], "intermediate_size": lm["intermediate_size"],
        "max_position_embeddings": lm["max_position_embeddings"], "num_attention_heads": lm["num_attention_heads"],
        "num_hidden_layers": lm["num_hidden_layers"], "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "use_cache": True, "vocab_size": lm["vocab_size"],
        "freeze_mm_mlp_adapter": False, "image_aspect_ratio": "pad", "mm_hidden_size": clip["hidden_size"],
        "mm_projector_lr": 2e-05, "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": vision_tower, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": False, "use_mm_proj": True,
    }
    if family == "llama":
        cfg = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlavaLlamaForCausalLM"],
               "model_type": "llava", "attention_bias": False, "freeze_mm_vision_resampler": False,
               "max_length": 4096, "mm_resampler_type": None, "num_key_value_heads": lm["num_attention_heads"],
               "pad_token_id": 0, "pretraining_tp": 1, "rope_scaling": None, "rope_theta": 10000.0,
               "torch_dtype": "float16", "transformers_version": "4.31.0", "tune_mm_vision_resampler": False,
               **common}
    elif family == "mistral":
        cfg = {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["LlavaMistralForCausalLM"],
               "model_type": "llava_mistral", "attention_dropout": 0.0, "mm_patch_merge_type": "flat",
               "num_key_value_heads": lm.get("num_key_value_heads", 2), "rope_theta": 1000000.0,
               "sliding_window": None, "torch_dtype": "bfloat16", "transformers_version": "4.36.2", **common}
    else:
        raise ValueError(family)
    cfg.update(overrides)
    return dict(sorted(cfg.items()))


def _write_tokenizer(folder: Path, family: str) -> None:
    import shutil

    shutil.copy(TOKENIZER_MODEL, folder / "tokenizer.model")
    tok = lambda s: {"__type": "AddedToken", "content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False}
    if family == "llama":  # llava-v1.5-7b / Quilt-LLaVA: LlamaTokenizer, legacy false, no pad token
        cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": tok("<s>"), "clean_up_tokenization_spaces": False,
               "eos_token": tok("</s>"), "legacy": False, "model_max_length": 2048, "pad_token": None,
               "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": tok("<unk>")}
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    else:  # LLaVA-Med v1.5 Mistral: the Mistral-7B-Instruct tokenizer config (no tokenizer.json)
        cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
               "eos_token": "</s>", "legacy": True, "model_max_length": 2048, "pad_token": "<unk>",
               "padding_side": "right", "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
               "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False}
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def write_original_llava(folder: Path, family: str = "llama", lm: dict | None = None, clip: dict = TINY_CLIP,
                         vision_tower: str = VISION_TOWER_REPO, seed: int = 0, n_shards: int = 2,
                         weights_format: str | None = None, **config_overrides) -> Path:
    """An original-format LLaVA folder (config, shards + index, sentencepiece tokenizer, generation config)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm = dict(lm or (TINY_LM if family == "llama" else {**TINY_LM, "num_key_value_heads": 2}))
    weights_format = weights_format or ("bin" if family == "llama" else "safetensors")
    cfg = llava_config(family, lm, clip, vision_tower, **config_overrides)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
         "transformers_version": cfg["transformers_version"]}, indent=2))
    _write_tokenizer(folder, family)
    dtype = torch.float16 if family == "llama" else torch.bfloat16
    shapes = llava_lm_shapes(lm, clip["hidden_size"])
    names = list(shapes)
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for k in range(n_shards):
        chunk = {n: random_tensor(n, shapes[n], seed).to(dtype).contiguous() for n in names[k * per:(k + 1) * per]}
        if weights_format == "bin":
            fname = f"pytorch_model-{k + 1:05d}-of-{n_shards:05d}.bin"
            torch.save(chunk, folder / fname)
        else:
            fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
            save_file(chunk, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in chunk})
        total += sum(t.numel() * t.element_size() for t in chunk.values())
    index = "pytorch_model.bin.index.json" if weights_format == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


def make_hub_snapshot(cache: Path, repo: str, files_from: Path) -> Path:
    """Lay out ``files_from`` as an offline Hugging Face hub cache snapshot of ``repo``."""
    import shutil

    org, name = repo.split("/")
    base = Path(cache) / f"models--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in Path(files_from).iterdir():
        shutil.copy(f, snap / f.name)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    return snap


def reference_image(width: int = 48, height: int = 30):
    """A deterministic non-square RGB image (arithmetic, no RNG), so pad-to-square matters."""
    from PIL import Image

    data = bytes(((x * 37 + y * 91 + c * 53 + (x * y) % 17) % 256) for y in range(height) for x in range(width)
                 for c in range(3))
    return Image.frombytes("RGB", (width, height), data)
