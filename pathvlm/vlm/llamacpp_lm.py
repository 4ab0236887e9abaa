"""A reasoner's language model decoded by llama.cpp (``quantize="q8_0"``).

The vision tower, the projector and the token embedding run in torch as always; the prompt goes to
llama.cpp as one block of input embeddings (text tokens and image embeddings alike, so llama.cpp never
needs to know about images), and every later step as a token id. Weights come from
:func:`pathvlm.vlm.gguf_export.export_gguf`, written once per model under ``$PATHVLM_HOME/gguf/`` (named by
the language model's fingerprint) and reused.

Why: a decode step of a 135M model on a CPU is a few dozen tiny matrix-vector products; llama.cpp runs the
whole step in C with its own threads and 8-bit weights (Q8_0: blocks of 32 values with their own scale),
where torch pays Python and dispatch per operation (``benchmarks/bench_chat.py`` measures both). Needs
llama-cpp-python (built from source: docs/benchmarks.md gives the flags); one request at a time (the
reasoner's lock), batch 1.
"""
from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import numpy as np
import torch

from pathvlm.errors import PathVLMError
from pathvlm.paths import home


def gguf_path(model, gguf_type: str = "q8_0", cache_dir: str | Path | None = None) -> Path:
    """The cache file for this language model: named by a fingerprint of its weights (and of an untied head)."""
    from pathvlm.clip.folder import model_fingerprint
    from pathvlm.vlm.gguf_export import head_is_tied

    parts = [model.model.language_model] + ([] if head_is_tied(model) else [model.lm_head])
    return Path(cache_dir or home() / "gguf") / f"{model_fingerprint(torch.nn.ModuleList(parts))}.{gguf_type}.gguf"


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError as e:
        raise PathVLMError("quantize q8_0 decodes with llama.cpp, which is not installed: pip install "
                           "llama-cpp-python (a C++ build; docs/benchmarks.md#llamacpp gives the flags for this CPU)"
                           ) from e
    return llama_cpp


class LlamaCppLM:
    """``prefill(embeddings) -> logits`` and ``step(token_id) -> logits`` on a GGUF language model."""

    def __init__(self, path: str | Path, n_ctx: int):
        L = llama_cpp_module()
        self.L = L
        # keys and values in float32, not llama.cpp's default f16: on 32 val questions of pathvlm-nano, an f16 cache
        # changed 1 greedy answer of 32 (Q8_0 weights) and a float32 one none
        f32 = L.GGML_TYPE_F32
        self.llm = L.Llama(model_path=str(path), n_ctx=int(n_ctx), n_batch=int(n_ctx), n_ubatch=512,
                           n_threads=torch.get_num_threads(), verbose=False, type_k=f32, type_v=f32)
        self.ctx = self.llm.ctx
        self.n_embd = int(L.llama_model_n_embd(self.llm.model))
        self.n_vocab = int(self.llm.n_vocab())
        self.n_ctx = int(n_ctx)
        self.pos = 0
        self._one = L.llama_batch_init(1, 0, 1)
        # freed while the modules still exist (at exit too): llama-cpp-python's own __del__ fails at shutdown
        weakref.finalize(self, _close, L, self.llm, self._one)

    def _threads(self):
        n = torch.get_num_threads()  # follow torch's setting, so one knob sets both
        self.L.llama_set_n_threads(self.ctx, n, n)

    def _logits(self) -> torch.Tensor:
        ptr = self.L.llama_get_logits_ith(self.ctx, -1)
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()).view(1, -1)

    def _decode(self, batch):
        rc = self.L.llama_decode(self.ctx, batch)
        if rc != 0:
            raise PathVLMError(f"llama.cpp could not decode (llama_decode returned {rc}; "
                               f"{self.pos} of {self.n_ctx} context positions used)")

    def prefill(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Start a new sequence from ``[T, n_embd]`` input embeddings; the logits after the last one."""
        emb = np.ascontiguousarray(embeddings.detach().to("cpu", torch.float32).numpy())
        n = emb.shape[0]
        if emb.ndim != 2 or emb.shape[1] != self.n_embd:
            raise PathVLMError(f"prefill takes [tokens, {self.n_embd}] embeddings, got {tuple(emb.shape)}")
        if n >= self.n_ctx:
            raise PathVLMError(f"the prompt has {n} positions; this llama.cpp context holds {self.n_ctx}")
        self._threads()
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        batch = self.L.llama_batch_init(n, self.n_embd, 1)
        try:
            ctypes.memmove(batch.embd, emb.ctypes.data, emb.nbytes)
            for i in range(n):
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = 1 if i == n - 1 else 0
            batch.n_tokens = n
            self.pos = 0
            self._decode(batch)
            self.pos = n
        finally:
            self.L.llama_batch_free(batch)
        return self._logits()

    def step(self, token_id: int) -> torch.Tensor:
        """Feed one token at the next position; the logits after it."""
        if self.pos >= self.n_ctx:
            raise PathVLMError(f"the llama.cpp context of {self.n_ctx} positions is full")
        b = self._one
        b.token[0] = int(token_id)
        b.pos[0] = self.pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        b.n_tokens = 1
        self._decode(b)
        self.pos += 1
        return self._logits()


def _close(L, llm, batch):
    L.llama_batch_free(batch)
    llm.close()


class InLlamaCpp(torch.nn.Module):
    """Stands where a decoder layer was once its weights live in llama.cpp: calling it is an error, not a silent
    skip."""

    def forward(self, *args, **kwargs):
        raise PathVLMError("this reasoner's language model decodes in llama.cpp (quantize q8_0): use Reasoner.chat "
                           "or pathvlm.vlm.decode.decode_tokens, not the torch forward or generate")


def attach_llama_cpp(model, tokenizer, gguf_type: str = "q8_0", n_ctx: int | None = None,
                     cache_dir: str | Path | None = None) -> Path:
    """Export the language model once (cached) and attach a :class:`LlamaCppLM` as ``model.pathvlm_llamacpp``;
    :func:`pathvlm.vlm.decode.decode_tokens` then decodes through it. The torch decoder layers are released (the
    token embedding stays: the prompt's embeddings are made in torch). Returns the GGUF path."""
    from pathvlm.vlm.gguf_export import export_gguf

    llama_cpp_module()
    path = gguf_path(model, gguf_type, cache_dir)
    if not path.exists():
        export_gguf(model, tokenizer, path, gguf_type)
    lm = model.model.language_model
    ctx = n_ctx or int(getattr(lm.config, "max_position_embeddings", 2048))
    model.pathvlm_llamacpp = LlamaCppLM(path, min(ctx, 8192))
    model.pathvlm_gguf = path
    lm.layers = torch.nn.ModuleList(InLlamaCpp() for _ in lm.layers)
    return path
