"""A reasoner's language model as a GGUF file, for llama.cpp.

The reasoner's LoRA is already merged into its language model when it is loaded
(``pathvlm.vlm.adapters.apply_bundle``), so the file holds exactly the weights the torch model decodes
with: the Llama blocks, the final norm, the token embedding and (when it is not tied to the embedding)
the LM head. The vision tower and the projector stay in torch; the image enters llama.cpp as input
embeddings (:mod:`pathvlm.vlm.llamacpp_lm`).

Layout follows llama.cpp's own converter (``convert_hf_to_gguf.py``, ``LlamaModel``): tensor names
``token_embd``, ``blk.N.attn_q`` ..., the query and key rows permuted from Hugging Face's rotary layout to
GGUF's, 2-D weights in the chosen type (``q8_0``: blocks of 32 int8 values with one fp16 scale; ``f16``;
``f32``) and norms in float32. The vocabulary is written as a GPT-2-style BPE vocabulary (tokens, types,
merges), enough for llama.cpp to load it; pathvlm tokenises and detokenises with the model's own
tokenizer and hands llama.cpp token ids only.

Checked by reading the file back with transformers' GGUF loader (tests) and by comparing llama.cpp's
logits with the torch model's (``benchmarks/eval_quantized.py``).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from pathvlm.errors import PathVLMError
from pathvlm.imports import require_package

GGUF_TYPES = ("q8_0", "f16", "f32")


def permute_rotary(weight: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Hugging Face's rotary row order -> GGUF's (llama.cpp's ``LlamaModel.permute``)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _parts(model):
    from pathvlm.vlm import llama_step

    if not llama_step.supports(model):
        raise PathVLMError(f"{type(model).__name__}: llama.cpp export needs a Llama language model with default "
                           "rotary embeddings, SiLU MLP and no biases (SmolLM2, Llama, Vicuna-style LMs)")
    return model.model.language_model, model.lm_head


def head_is_tied(model) -> bool:
    """True when the LM head is the token embedding (llama.cpp then reuses ``token_embd`` as the output)."""
    head, embed = model.lm_head.weight, model.model.language_model.embed_tokens.weight
    return head is embed or torch.equal(head, embed)


def _vocab(tokenizer, n_vocab: int):
    """tokens, token types and merges in GGUF's ``gpt2`` vocabulary form."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("model", {}).get("type") != "BPE":
        raise PathVLMError("llama.cpp export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM2's); "
                           f"this tokenizer is {spec.get('model', {}).get('type') or type(tokenizer).__name__}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: tok for i, tok in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:  # embedding rows past the tokenizer (padding of a resized embedding)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    return tokens, types, merges


def export_gguf(model, tokenizer, out: str | Path, gguf_type: str = "q8_0") -> Path:
    """Write the language model of a (LoRA-merged) reasoner to ``out`` as GGUF; returns the path.
    The file is written to a temporary name and renamed, so a crash never leaves a half file under ``out``."""
    require_package("gguf", extra="reasoner", pip_name="gguf")
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise PathVLMError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, not {gguf_type!r}")
    lm, head = _parts(model)
    cfg = lm.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    embed = lm.embed_tokens.weight
    n_vocab = embed.shape[0]
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "f16": gguf.GGMLQuantizationType.F16,
             "f32": gguf.GGMLQuantizationType.F32}[gguf_type]
    file_type = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "f32": gguf.LlamaFileType.ALL_F32}[gguf_type]

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(getattr(model, "pathvlm_name", None) or "pathvlm language model")
        w.add_context_length(int(cfg.max_position_embeddings))
        w.add_embedding_length(int(cfg.hidden_size))
        w.add_block_count(int(cfg.num_hidden_layers))
        w.add_feed_forward_length(int(cfg.intermediate_size))
        w.add_head_count(int(cfg.num_attention_heads))
        w.add_head_count_kv(int(cfg.num_key_value_heads))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_rope_freq_base(float(theta))
        w.add_rope_dimension_count(int(head_dim))
        w.add_vocab_size(int(n_vocab))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tokens, types, merges = _vocab(tokenizer, n_vocab)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        for key, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                         ("pad", tokenizer.pad_token_id)):
            if tid is not None:
                getattr(w, f"add_{key}_token_id")(int(tid))
        w.add_add_bos_token(False)

        def put(name: str, t: torch.Tensor, rotary: int | None = None, kv: int | None = None):
            a = t.detach().to("cpu", torch.float32).numpy()
            if rotary is not None:
                a = permute_rotary(a, rotary, kv)
            if a.ndim == 1 or gguf_type == "f32":
                w.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
            elif gguf_type == "f16":
                w.add_tensor(name, a.astype(np.float16))
            else:
                w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(a), qtype), raw_dtype=qtype)

        put("token_embd.weight", embed)
        for i, layer in enumerate(lm.layers):
            att, mlp = layer.self_attn, layer.mlp
            put(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight)
            put(f"blk.{i}.attn_q.weight", att.q_proj.weight, cfg.num_attention_heads, cfg.num_attention_heads)
            put(f"blk.{i}.attn_k.weight", att.k_proj.weight, cfg.num_attention_heads, cfg.num_key_value_heads)
            put(f"blk.{i}.attn_v.weight", att.v_proj.weight)
            put(f"blk.{i}.attn_output.weight", att.o_proj.weight)
            put(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight)
            put(f"blk.{i}.ffn_gate.weight", mlp.gate_proj.weight)
            put(f"blk.{i}.ffn_up.weight", mlp.up_proj.weight)
            put(f"blk.{i}.ffn_down.weight", mlp.down_proj.weight)
        put("output_norm.weight", lm.norm.weight)
        if not head_is_tied(model):
            put("output.weight", head.weight)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
