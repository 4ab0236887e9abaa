"""int8 language-model weights for CPU decoding, on torch's own kernels.

A decode step of a small causal LM on a CPU reads every linear weight once per token, so tokens/s is
bounded by bytes of weights over memory bandwidth. ``quantize="int8"`` stores each linear weight of the
language model and the LM head as int8 with one scale per output row (symmetric): 4x fewer bytes than
fp32. How the products run:

- one row of activations (every decode step): torch's quantized engine (FBGEMM / x86,
  ``torch.ops.quantized.linear_dynamic``) quantises that token's activations to 8 bits (asymmetric, full
  range) and multiplies with VNNI integer instructions: the fast path;
- 2..16 rows (batched decoding in the evaluations): the same kernel row by row, so every token is
  quantised on its own scale exactly as in single-request decoding;
- more rows (the prefill): the int8 weight dequantised to float32 and ``F.linear``: the prompt's image and
  text tokens have very different ranges, and one activation scale for all of them (what the kernel does
  for a block) costs accuracy (measured: mean KL 0.81 nats per token against fp32, where per-token scales
  give 0.006 and weight-only int8 0.0005).

Measured and not used (``benchmarks/bench_chat.py`` prints the per-matrix kernel times): torch's
weight-only kernels ``aten._weight_int8pack_mm`` and ``aten._weight_int4pack_mm_for_cpu`` are slower than
fp32 ``F.linear`` for one token on the AVX-512 CPU here, and weight-only int4 in groups of 32 moved the
pathvlm-nano logits far from fp32 (mean KL 3.4 nats per token), so there is no int4 mode.

:func:`quantize_language_model` swaps every ``nn.Linear`` of the language model (attention, MLP) and the
LM head for a :class:`QuantizedLinear`; the vision tower, projector, embeddings and norms stay in float.
It applies to any reasoner whose language model is built from ``nn.Linear`` layers (Llama, Qwen2, Mistral
... in transformers), so a retrained Llama-family reasoner quantises the same way; the lean decoder
(:mod:`pathvlm.vlm.llama_step`) and ``generate`` both run through the quantised layers. Quantisation is
lossy: the accuracy cost is measured (``benchmarks/eval_quantized.py``), not assumed.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from pathvlm.errors import PathVLMError

QUANTIZE_MODES = ("none", "int8", "q8_0")
ROW_BY_ROW_MAX = 16  # up to this many rows, each row gets its own activation scale in the int8 kernel
# 7-bit activations: on x86 CPUs without VNNI (AVX2 only) FBGEMM multiplies u8 activations by s8 weights in
# pairs summed into int16 (vpmaddubsw), which saturates with full 8-bit activations (measured on an AVX2-only CPU:
# max error 0.145 against 0.066 allowed on a 96-wide layer; within it with 7 bits). PyTorch's fbgemm qconfig does the same.
REDUCE_RANGE = True


def check_mode(mode: str | None) -> str:
    """``None``/``"none"``/``"fp32"`` -> ``"none"``; ``"int8"``; anything else is refused with the choices."""
    mode = "none" if mode in (None, "", "fp32", "none") else str(mode).lower()
    if mode not in QUANTIZE_MODES:
        raise PathVLMError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {mode!r}")
    return mode


def int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-row int8: ``w ~= q * scale`` with ``q`` in [-127, 127]."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def _prepack(q: torch.Tensor, scale: torch.Tensor):
    """FBGEMM's packed form of an int8 weight for ``quantized.linear_dynamic``. Quantised tensors are made only
    here and never leave this module (torch.ao's quantised-tensor API is marked deprecated; its kernels are not)."""
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise PathVLMError(f"torch {torch.__version__} has no quantized.linear_dynamic kernel; use precision bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None)


class QuantizedLinear(nn.Module):
    """An ``nn.Linear`` stand-in whose weight is stored as int8 with per-row scales (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.dtype = linear.weight.dtype
        q, scale = int8_weight(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        self.packed = _prepack(q, scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).float()
        rows = x2.shape[0]
        if rows == 1:
            y = torch.ops.quantized.linear_dynamic(x2, self.packed, REDUCE_RANGE)
        elif rows <= ROW_BY_ROW_MAX:
            y = torch.cat([torch.ops.quantized.linear_dynamic(x2[i:i + 1], self.packed, REDUCE_RANGE) for i in range(rows)])
        else:
            y = F.linear(x2, self.dequantized())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 values and scales stand for."""
        return self.qweight.float() * self.scales[:, None]

    def nbytes(self) -> int:
        """Bytes a one-token product reads: one per weight plus a float32 scale per row."""
        return self.qweight.numel() + 4 * self.scales.numel()


def _language_model_and_head(model):
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None)
    return lm, getattr(model, "lm_head", None)


def quantize_language_model(model, mode: str = "int8", tokenizer=None) -> int:
    """``int8``: replace the language model's linear layers and the LM head by :class:`QuantizedLinear` (in
    place, CPU); a tied LM head gets its own int8 copy; the input embedding stays in float. ``q8_0``: export the
    language model to GGUF Q8_0 once and decode it with llama.cpp (:mod:`pathvlm.vlm.llamacpp_lm`; needs the
    ``tokenizer``). Returns the number of layers now running quantised. The model is marked
    (``model.pathvlm_quantize``) and a second call is refused."""
    mode = check_mode(mode)
    if mode == "none":
        return 0
    if getattr(model, "pathvlm_quantize", None):
        raise PathVLMError(f"this model is already quantised ({model.pathvlm_quantize})")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise PathVLMError(f"quantize {mode} targets CPU decoding; on a GPU use bf16")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise PathVLMError(f"quantize {mode} starts from float32 weights: load with precision fp32")
    if mode == "q8_0":
        return _to_llama_cpp(model, tokenizer)
    lm, head = _language_model_and_head(model)
    if lm is None:
        raise PathVLMError(f"{type(model).__name__}: no language model found to quantise "
                           "(expected model.model.language_model, as transformers' vision-language models have)")
    targets = [(lm, name, mod) for name, mod in lm.named_modules() if isinstance(mod, nn.Linear)]
    if isinstance(head, nn.Linear):
        targets.append((model, "lm_head", head))
    for root, name, mod in targets:
        parent = root.get_submodule(name.rsplit(".", 1)[0]) if "." in name else root
        setattr(parent, name.rsplit(".", 1)[-1], QuantizedLinear(mod))
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and getattr(cfg, "tie_word_embeddings", False):
            cfg.tie_word_embeddings = False  # the head is now its own (int8) layer
    model.pathvlm_quantize = mode
    return len(targets)


def _to_llama_cpp(model, tokenizer) -> int:
    from pathvlm.vlm.llamacpp_lm import attach_llama_cpp
    from pathvlm.vlm.modeling import PathVLMForConditionalGeneration

    if not isinstance(model, PathVLMForConditionalGeneration):
        raise PathVLMError(f"quantize q8_0 (llama.cpp) applies to PathVLM reasoners; {type(model).__name__} "
                           "can use int8")
    if tokenizer is None:
        raise PathVLMError("quantize q8_0 needs the reasoner's tokenizer (its vocabulary goes into the GGUF file)")
    n = sum(isinstance(m, nn.Linear) for m in model.model.language_model.modules()) + 1
    attach_llama_cpp(model, tokenizer, "q8_0")
    model.pathvlm_quantize = "q8_0"
    return n


def weight_bytes(model) -> int:
    """Bytes of the language model's linear weights and LM head as a one-token step reads them."""
    if getattr(model, "pathvlm_gguf", None) is not None:  # decoded by llama.cpp: the GGUF file's weights
        return model.pathvlm_gguf.stat().st_size
    lm, head = _language_model_and_head(model)
    mods = list(lm.modules()) if lm is not None else []
    if head is not None:
        mods.append(head)
    total = 0
    for m in mods:
        if isinstance(m, QuantizedLinear):
            total += m.nbytes()
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total
