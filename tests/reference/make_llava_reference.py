"""Reference outputs of the original LLaVA code for the tiny original-format checkpoints (run once; output committed).

The LLaVA package pins transformers 4.36 and cannot share pathvlm's environment (transformers 5), so this
script runs in its own venv with the official LLaVA release from PyPI (``llava-torch`` 1.2.2.post1 is
haotian-liu/LLaVA v1.2.2.post1: ``llava_llama``, ``llava_mistral``, ``conv_templates`` incl. ``vicuna_v1`` and
``mistral_instruct``, ``tokenizer_image_token``, ``process_images``)::

    python3 -m venv /tmp/llava-ref-venv
    /tmp/llava-ref-venv/bin/pip install "torch<=2.14.1" transformers==4.36.2 tokenizers==0.15.0 \\
        sentencepiece==0.1.99 accelerate==0.21.0 "numpy<2" pillow protobuf safetensors
    /tmp/llava-ref-venv/bin/pip install --no-deps llava-torch==1.2.2.post1
    /tmp/llava-ref-venv/bin/python tests/reference/make_llava_reference.py

It writes ``llava_reference.json`` (versions, prompts, token ids, greedy tokens), ``llava_reference.safetensors``
(pixel values and logits) and ``llava_keys_7b.json`` (the state-dict keys and shapes of LLaVA's own 7B Llama and
Mistral classes, built on the meta device). The model is loaded the way ``llava.model.builder.load_pretrained_model``
does (slow tokenizer for Llama, fast for Mistral; LLaVA's token additions; the vision tower from
``mm_vision_tower`` through the offline hub cache) but on the CPU in float32, so the comparison is not blurred by fp16.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llava_layout as L  # noqa: E402

CASES = {
    # name: (system or None, [(role, text)], last user question); the image goes into the first user turn
    "single": (None, [], "What is shown in this image?"),
    "multi": (None, [("user", "Describe the histological features of this image."),
                     ("assistant", "Glands are crowded with nuclear atypia.")],
              "Is this benign colonic tissue? Answer yes or no."),
    "system": ("You are a pathologist. Answer briefly.", [], "Which diagnosis best fits this H&E image?"),
}
# tokenisation-only prompts (no model): spaces, digits, unicode, special tokens in the text
TOKEN_CASES = {
    "spaces": (None, [], "  Two  spaces,\ttab and\n\nnew lines x200 1234."),
    "unicode": (None, [("user", "Grade 2/3 – µm-sized nuclei?"), ("assistant", "Yes: ≥ 5 mitoses.")], "Café au lait?"),
    "long_multi": ("Be concise.", [("user", "tumour?"), ("assistant", "no"), ("user", "stroma?"), ("assistant", "yes")],
                   "lymphocytes?"),
}
FAMILIES = {"llama": "vicuna_v1", "mistral": "mistral_instruct"}


def build_prompt(conv_templates, mode: str, system, turns, question, use_im_start_end=False) -> str:
    """The prompt exactly as LLaVA's CLI / model_vqa build it: the image token before the first user text."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN

    image = (DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN) if use_im_start_end else DEFAULT_IMAGE_TOKEN
    conv = conv_templates[mode].copy()
    if system is not None:
        conv.system = system
    msgs = list(turns) + [("user", question)]
    for i, (role, text) in enumerate(msgs):
        if i == 0:
            text = image + "\n" + text
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def load_like_builder(path: Path, family: str):
    """``load_pretrained_model`` without its GPU/fp16 specifics."""
    import torch
    from transformers import AutoTokenizer

    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
    from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM

    if family == "mistral":
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = LlavaMistralForCausalLM.from_pretrained(path, low_cpu_mem_usage=True, torch_dtype=torch.float32)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=False)
        model = LlavaLlamaForCausalLM.from_pretrained(path, low_cpu_mem_usage=True, torch_dtype=torch.float32)
    if getattr(model.config, "mm_use_im_patch_token", True):
        tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
    if getattr(model.config, "mm_use_im_start_end", False):
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    model.resize_token_embeddings(len(tokenizer))
    vision_tower = model.get_vision_tower()
    if not vision_tower.is_loaded:
        vision_tower.load_model()
    vision_tower.to(dtype=torch.float32)
    model.eval()
    return tokenizer, model, vision_tower.image_processor


def key_dump(tmp: Path) -> dict:
    """State-dict keys and shapes of LLaVA's 7B classes (meta device; the vision tower is delay-loaded, as in
    the published shards, which hold no vision weights)."""
    from accelerate import init_empty_weights

    from llava.model import LlavaLlamaForCausalLM, LlavaMistralForCausalLM
    from llava.model.language_model.llava_llama import LlavaConfig
    from llava.model.language_model.llava_mistral import LlavaMistralConfig

    real_clip = tmp / "clip-l14-336-config"
    real_clip.mkdir()
    c = L.REAL_CLIP_L14_336
    (real_clip / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {
        "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"], "image_size": c["image_size"],
        "patch_size": c["patch_size"], "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": c["num_attention_heads"], "projection_dim": c["projection_dim"]}}))
    out = {}
    for family, lm, cls, cfg_cls in (("llama", L.REAL_LLAMA_7B, LlavaLlamaForCausalLM, LlavaConfig),
                                     ("mistral", L.REAL_MISTRAL_7B, LlavaMistralForCausalLM, LlavaMistralConfig)):
        cfg = L.llava_config(family, lm, c, str(real_clip))
        config = cfg_cls(**{k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")})
        with init_empty_weights():
            model = cls(config)
        out[family] = {k: list(v.shape) for k, v in model.state_dict().items()}
    return out


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="llava-ref-"))
    hub = tmp / "hub"
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "HF_HOME": str(tmp / "hf"),
                       "TRANSFORMERS_OFFLINE": "1"})
    import importlib.metadata as md

    import torch
    from safetensors.torch import save_file

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    torch.set_num_threads(1)
    tower = L.write_clip_tower(tmp / "clip-src")
    L.make_hub_snapshot(hub, L.VISION_TOWER_REPO, tower)
    image = L.reference_image()
    record = {"versions": {"python": platform.python_version(), **{p: md.version(p) for p in (
                  "torch", "transformers", "tokenizers", "sentencepiece", "llava-torch", "accelerate", "numpy")}},
              "reference_code": "llava-torch 1.2.2.post1 (haotian-liu/LLaVA v1.2.2.post1, from PyPI): "
                                "llava.model.builder, llava.conversation, llava.mm_utils",
              "image_size": list(image.size), "families": {}}
    tensors = {}
    for family, mode in FAMILIES.items():
        folder = L.write_original_llava(tmp / f"llava-{family}", family)
        tokenizer, model, image_processor = load_like_builder(folder, family)
        pixel = process_images([image], image_processor, model.config)
        tensors[f"{family}.pixel_values"] = pixel.contiguous()
        fam = {"template": mode, "cases": {}, "token_cases": {}}
        for name, (system, turns, question) in CASES.items():
            prompt = build_prompt(conv_templates, mode, system, turns, question)
            ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
            with torch.inference_mode():
                logits = model(ids, images=pixel, image_sizes=[image.size]).logits[0].float()
                new = model.generate(ids, images=pixel, image_sizes=[image.size], do_sample=False, num_beams=1,
                                     max_new_tokens=12, use_cache=True)
            n = logits.shape[0]
            img_at = ids[0].tolist().index(IMAGE_TOKEN_INDEX)
            rows = sorted({img_at, img_at + 3, n - 40 if n > 40 else 0, n - 4, n - 3, n - 2, n - 1})
            tensors[f"{family}.{name}.logits"] = logits[rows].contiguous()
            fam["cases"][name] = {"system": system, "turns": turns, "question": question, "prompt": prompt,
                                  "input_ids": ids[0].tolist(), "n_positions": n, "logit_rows": rows,
                                  "greedy": new[0].tolist()[-12:],  # transformers 4.36 prepends a BOS placeholder when generating from embeddings
                                   "greedy_text": tokenizer.decode(new[0], skip_special_tokens=True)}
        for name, (system, turns, question) in TOKEN_CASES.items():
            prompt = build_prompt(conv_templates, mode, system, turns, question)
            fam["token_cases"][name] = {"system": system, "turns": turns, "question": question, "prompt": prompt,
                                        "input_ids": tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX)}
        record["families"][family] = fam
        print(family, {k: len(v["input_ids"]) for k, v in fam["cases"].items()})
    (HERE / "llava_reference.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, str(HERE / "llava_reference.safetensors"), metadata={"made_by": "make_llava_reference.py"})
    (HERE / "llava_keys_7b.json").write_text(json.dumps(key_dump(tmp), indent=0) + "\n")
    print("wrote", HERE / "llava_reference.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
