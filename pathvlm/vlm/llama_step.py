"""One-token decode steps for Llama-family language models (SmolLM2 is one) without the module stack.

After the prefill, a decode step of a 135M model on a CPU is a handful of small matrix-vector
products per layer; what it costs on top of reading the weights is Python and dispatch: module
calls, attention-mask and position bookkeeping, cache objects growing by ``torch.cat``. This stepper
keeps only the arithmetic: the same weights (shared, not copied), RMSNorm, rotary embeddings from
the model's own ``inv_freq``, scaled-dot-product attention over a preallocated KV buffer, SwiGLU.
Projections go through :func:`linear_fn`: the float weight with ``F.linear``, or a quantised layer's
kernel when the model was loaded with ``quantize`` (``pathvlm.vlm.quantize``).
It applies only where that arithmetic is exactly the model's (``supports``); elsewhere the caller
keeps using the model's forward. Greedy output equals ``generate`` (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_fn(module):
    """``x -> module(x)`` with the least Python on the way: ``F.linear`` with the weight bound for a plain
    bias-free ``nn.Linear``, the module's own forward otherwise (a quantised layer's kernel)."""
    if type(module) is nn.Linear and module.bias is None:
        w = module.weight
        return lambda x: F.linear(x, w)
    return module.forward


def _language_model(model):
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    return lm, getattr(model, "lm_head", None)


def supports(model) -> bool:
    """True for a PathVLM-style model whose language model is a plain Llama (default RoPE, SiLU MLP,
    no biases, no sliding window)."""
    lm, head = _language_model(model)
    cfg = getattr(lm, "config", None)
    if cfg is None or head is None or getattr(cfg, "model_type", None) != "llama":
        return False
    rope = getattr(cfg, "rope_parameters", None) or {}
    return (rope.get("rope_type", "default") == "default" and cfg.hidden_act == "silu"
            and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
            and hasattr(lm, "rotary_emb") and hasattr(lm, "layers"))


class LlamaStepper:
    """Continue decoding from a prefilled HF cache: ``step(token_id) -> logits`` of shape ``(1, vocab)``."""

    def __init__(self, model, cache, max_new_tokens: int):
        lm, self.head = _language_model(model)
        cfg = lm.config
        self.embed = lm.embed_tokens.weight
        self.norm_w, self.norm_eps = lm.norm.weight, lm.norm.variance_epsilon
        self.layers = lm.layers
        # one callable per projection: F.linear on the shared float weight, or a quantised layer's kernel
        self.proj = [{name: linear_fn(getattr(part, name)) for part, names in
                      ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                       (layer.mlp, ("gate_proj", "up_proj", "down_proj"))) for name in names}
                     for layer in self.layers]
        self.head_fn = linear_fn(self.head)
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.pos = cache.get_seq_length()
        total = self.pos + max_new_tokens + 1
        self.dtype = self.embed.dtype
        # rotary tables, computed as the model's rotary module does (float32, then the weights' dtype)
        rot = lm.rotary_emb
        positions = torch.arange(total, device=self.embed.device, dtype=torch.float32)
        freqs = positions[:, None] * rot.inv_freq.to(device=self.embed.device, dtype=torch.float32)[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rot.attention_scaling).to(self.dtype)
        self.sin = (emb.sin() * rot.attention_scaling).to(self.dtype)
        # preallocated keys/values, filled from the prefill cache
        self.k, self.v = [], []
        for layer in cache.layers[:len(self.layers)]:
            keys, values = layer.keys, layer.values
            k = keys.new_zeros(1, self.kv_heads, total, self.head_dim)
            v = values.new_zeros(1, self.kv_heads, total, self.head_dim)
            k[:, :, :self.pos] = keys
            v[:, :, :self.pos] = values
            self.k.append(k)
            self.v.append(v)

    @staticmethod
    def _rms(x, weight, eps):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(dtype)

    def _rope(self, x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    @torch.inference_mode()
    def step(self, token_id: int) -> torch.Tensor:
        p = self.pos
        h = self.embed[token_id].view(1, 1, -1)
        cos, sin = self.cos[p].view(1, 1, 1, -1), self.sin[p].view(1, 1, 1, -1)
        for i, layer in enumerate(self.layers):
            attn, proj = layer.self_attn, self.proj[i]
            x = self._rms(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            q = proj["q_proj"](x).view(1, 1, self.heads, self.head_dim).transpose(1, 2)
            k = proj["k_proj"](x).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            v = proj["v_proj"](x).view(1, 1, self.kv_heads, self.head_dim).transpose(1, 2)
            self.k[i][:, :, p:p + 1] = self._rope(k, cos, sin)
            self.v[i][:, :, p:p + 1] = v
            out = F.scaled_dot_product_attention(self._rope(q, cos, sin), self.k[i][:, :, :p + 1],
                                                 self.v[i][:, :, :p + 1], scale=attn.scaling,
                                                 enable_gqa=self.heads != self.kv_heads)
            h = h + proj["o_proj"](out.transpose(1, 2).reshape(1, 1, -1))
            x = self._rms(h, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            h = h + proj["down_proj"](F.silu(proj["gate_proj"](x)) * proj["up_proj"](x))
        self.pos += 1
        return self.head_fn(self._rms(h, self.norm_w, self.norm_eps))[:, -1]
