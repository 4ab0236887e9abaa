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

The prompt itself is a block of matrix-matrix products, where torch's float32 kernels can match llama.cpp's Q8_0
ones (about 110 vs 150 ms for 71 positions on 2 cores of an Intel CPU; slower than llama.cpp on an AMD EPYC:
docs/benchmarks.md). By default (``prefill="torch"``) the prompt runs through the reasoner's own float32
decoder layers, and its keys and values are written
into llama.cpp's KV cache through llama.cpp's sequence-state API (``llama_state_seq_set_data``); the decode
steps then run in llama.cpp. The prompt is then exactly the float32 model's, and only the new tokens see Q8_0
weights. The state layout is checked when the model is attached (a probe's state, parsed and rebuilt, must
give the same bytes); a llama.cpp whose layout differs gets its own prefill, and says so.
"""
from __future__ import annotations

import copy
import ctypes
import struct
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


STATE_MAGIC = 0xAF143CD8  # llama-context.cpp's io_magic, the first field of a sequence state
GGML_F32 = 0


def parse_state(data: bytes) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], bool]:
    """Read a one-sequence llama.cpp state (``llama_state_seq_get_data``) of a float32 KV cache:
    ``(positions, keys, values, v_trans)`` with keys and values ``[cells, width]`` per layer. Raises
    ValueError on anything else (several streams, cell extensions, other cache types, trailing bytes)."""
    off = 0

    def read(fmt):
        nonlocal off
        if off + struct.calcsize(fmt) > len(data):
            raise ValueError("the state ends early")
        out = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return out

    def floats(count):
        nonlocal off
        if off + 4 * count > len(data):
            raise ValueError("the state ends early")
        out = np.frombuffer(data, np.float32, count, off)
        off += 4 * count
        return out

    magic, _seq = read("<Ii")
    n_stream, cells = read("<II")
    if magic != STATE_MAGIC or n_stream != 1:
        raise ValueError(f"magic {magic:#x} and {n_stream} streams (expected {STATE_MAGIC:#x} and 1)")
    meta = np.frombuffer(data, np.int32, 3 * cells, off).reshape(cells, 3)
    off += meta.nbytes
    if not (meta[:, 1] == 1).all():
        raise ValueError("cells with other than one sequence id (or cell extensions)")
    v_trans, n_layer = read("<II")
    keys, values = [], []
    for _ in range(n_layer):
        kind, row = read("<iQ")
        if kind != GGML_F32 or row % 4:
            raise ValueError(f"key cache of ggml type {kind} (float32 expected)")
        keys.append(floats(cells * row // 4).reshape(cells, row // 4))
    for _ in range(n_layer):
        if v_trans:
            kind, size, width = read("<iII")
            if kind != GGML_F32 or size != 4:
                raise ValueError(f"value cache of ggml type {kind} (float32 expected)")
            values.append(floats(width * cells).reshape(width, cells).T)
        else:
            kind, row = read("<iQ")
            if kind != GGML_F32 or row % 4:
                raise ValueError(f"value cache of ggml type {kind} (float32 expected)")
            values.append(floats(cells * row // 4).reshape(cells, row // 4))
    if off != len(data):
        raise ValueError(f"{len(data) - off} bytes left after the last layer")
    return meta[:, 0].copy(), keys, values, bool(v_trans)


def state_bytes(keys: list[np.ndarray], values: list[np.ndarray], v_trans: bool) -> bytes:
    """The inverse of :func:`parse_state` for positions ``0..cells-1`` of sequence 0."""
    cells = keys[0].shape[0]
    meta = np.zeros((cells, 3), np.int32)
    meta[:, 0] = np.arange(cells)
    meta[:, 1] = 1
    parts = [struct.pack("<IiII", STATE_MAGIC, 0, 1, cells), meta.tobytes(), struct.pack("<II", int(v_trans), len(keys))]
    for k in keys:
        parts += [struct.pack("<iQ", GGML_F32, 4 * k.shape[1]), np.ascontiguousarray(k, np.float32).tobytes()]
    for v in values:
        if v_trans:
            parts += [struct.pack("<iII", GGML_F32, 4, v.shape[1]), np.ascontiguousarray(v.T, np.float32).tobytes()]
        else:
            parts += [struct.pack("<iQ", GGML_F32, 4 * v.shape[1]), np.ascontiguousarray(v, np.float32).tobytes()]
    return b"".join(parts)


def gguf_rotary_order(keys: torch.Tensor) -> torch.Tensor:
    """Keys ``[kv_heads, T, head_dim]`` in transformers' rotary layout (each head's halves rotated together) ->
    ``[T, kv_heads * head_dim]`` in GGUF's (adjacent pairs), the order :func:`gguf_export.permute_rotary` gives
    the key projection's rows, and so the order in which llama.cpp caches them."""
    h, t, d = keys.shape
    return keys.reshape(h, t, 2, d // 2).transpose(2, 3).permute(1, 0, 2, 3).reshape(t, h * d)


class TorchPrefill:
    """The prompt through the reasoner's own (float32) decoder layers: ``(embeddings [T, n_embd]) -> (logits of
    the last position [1, vocab], keys, values)``, keys in GGUF's rotary order, both ``[T, width]`` per layer."""

    def __init__(self, language_model, layers, lm_head):
        self.lm = copy.copy(language_model)  # a second view of the same modules, with the real decoder layers
        self.lm._modules = dict(language_model._modules)
        self.lm._modules["layers"] = layers
        self.lm_head = lm_head

    @torch.inference_mode()
    def __call__(self, embeddings: torch.Tensor):
        out = self.lm(inputs_embeds=embeddings[None], use_cache=True)
        logits = self.lm_head(out.last_hidden_state[:, -1])
        keys = [gguf_rotary_order(layer.keys[0]).float().numpy() for layer in out.cache.layers]
        values = [layer.values[0].permute(1, 0, 2).reshape(layer.values.shape[2], -1).float().numpy()
                  for layer in out.cache.layers]
        return logits, keys, values


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
        self.torch_prefill: TorchPrefill | None = None  # set by use_torch_prefill
        self.v_trans = True

    def state_problem(self) -> str | None:
        """None when this llama.cpp's sequence state has the layout :func:`state_bytes` writes (checked on a
        two-position probe: parsed and rebuilt, the bytes must be the same), else why not."""
        self._prefill_llama(torch.zeros(2, self.n_embd))
        try:
            data = self._get_state()
            _, keys, values, v_trans = parse_state(data)
        except ValueError as e:
            return f"llama.cpp's sequence state is not in the layout pathvlm writes ({e})"
        if state_bytes(keys, values, v_trans) != data:
            return "llama.cpp's sequence state did not rebuild byte for byte"
        self.v_trans = v_trans
        return None

    def use_torch_prefill(self, prefill: TorchPrefill) -> str | None:
        """Run prompts through ``prefill`` (torch) and decode in llama.cpp; returns why not when the state layout
        is not the expected one (the llama.cpp prefill then stays)."""
        problem = self.state_problem()
        if problem is None:
            self.torch_prefill = prefill
        return problem

    def _get_state(self) -> bytes:
        size = self.L.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = self.L.llama_state_seq_get_data(self.ctx, buf, size, 0)
        return bytes(buf)[:n]

    def load_state(self, keys: list[np.ndarray], values: list[np.ndarray]) -> None:
        """Make ``keys``/``values`` (``[T, width]`` per layer, GGUF rotary order) the cache of positions ``0..T-1``."""
        data = state_bytes(keys, values, self.v_trans)
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), False)  # see _prefill_llama
        self.pos = 0
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self.L.llama_state_seq_set_data(self.ctx, buf, len(data), 0) != len(data):
            raise PathVLMError("llama.cpp refused the prompt's keys and values (llama_state_seq_set_data)")
        self.pos = keys[0].shape[0]

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
        if self.torch_prefill is None:
            return self._prefill_llama(embeddings)
        n = embeddings.shape[0]
        if n >= self.n_ctx:
            raise PathVLMError(f"the prompt has {n} positions; this llama.cpp context holds {self.n_ctx}")
        self._threads()
        logits, keys, values = self.torch_prefill(embeddings.float())
        self.load_state(keys, values)
        return logits.float()

    def _prefill_llama(self, embeddings: torch.Tensor) -> torch.Tensor:
        emb = np.ascontiguousarray(embeddings.detach().to("cpu", torch.float32).numpy())
        n = emb.shape[0]
        if emb.ndim != 2 or emb.shape[1] != self.n_embd:
            raise PathVLMError(f"prefill takes [tokens, {self.n_embd}] embeddings, got {tuple(emb.shape)}")
        if n >= self.n_ctx:
            raise PathVLMError(f"the prompt has {n} positions; this llama.cpp context holds {self.n_ctx}")
        self._threads()
        # the cells only: zeroing the data too wrote the whole cache (377 MB for 8,192 float32 positions, ~40 ms)
        # on every prompt, and a free cell is masked out of attention whatever it holds
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), False)
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
                     cache_dir: str | Path | None = None, prefill: str = "torch") -> Path:
    """Export the language model once (cached) and attach a :class:`LlamaCppLM` as ``model.pathvlm_llamacpp``;
    :func:`pathvlm.vlm.decode.decode_tokens` then decodes through it. ``prefill="torch"`` keeps the float32
    decoder layers for the prompt (out of the model's module tree, so its forward still refuses to run), about
    430 MB more for pathvlm-nano; ``prefill="llama.cpp"`` releases them and llama.cpp reads the prompt too. The
    token embedding stays either way (the prompt's embeddings are made in torch). Returns the GGUF path."""
    from pathvlm.vlm.gguf_export import export_gguf

    if prefill not in ("torch", "llama.cpp"):
        raise PathVLMError(f"prefill is 'torch' or 'llama.cpp', not {prefill!r}")
    llama_cpp_module()
    path = gguf_path(model, gguf_type, cache_dir)
    if not path.exists():
        export_gguf(model, tokenizer, path, gguf_type)
    lm = model.model.language_model
    ctx = n_ctx or int(getattr(lm.config, "max_position_embeddings", 2048))
    llm = LlamaCppLM(path, min(ctx, 8192))
    model.pathvlm_llamacpp = llm
    model.pathvlm_gguf = path
    layers = lm.layers
    lm.layers = torch.nn.ModuleList(InLlamaCpp() for _ in lm.layers)
    if prefill == "torch":
        head = model.get_output_embeddings()
        problem = llm.use_torch_prefill(TorchPrefill(lm, layers, head))
        if problem is not None:
            import warnings

            warnings.warn(f"{problem}; llama.cpp reads the prompt too", stacklevel=2)
    return path
