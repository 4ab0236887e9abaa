"""A lean single-request decoder for chat: prefill once (image included), then one token per forward
through the KV cache, with greedy or temperature/top-p sampling.

``model.generate`` does the same arithmetic but pays a per-token toll (logits processors, stopping
criteria, cache bookkeeping) that dominates a 135M model on a CPU; this loop is token-for-token equal
to greedy ``generate`` (tested) and is what ``pathvlm.chat`` uses for one image at a time. For Llama
language models the steps after the prefill skip the module stack too (``llama_step``); a model loaded with
``quantize="q8_0"`` hands its prompt embeddings and tokens to llama.cpp instead (``llamacpp_lm``).
"""
from __future__ import annotations

import threading
from typing import Iterator

import torch

from pathvlm.cancel import check_cancelled
from pathvlm.sampling import SEED_RANGE, effective_temperature, seed_in_range
from pathvlm.vlm import llama_step


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    temperature = effective_temperature(temperature)
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the smallest set whose mass reaches top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def decode_tokens(model, inputs: dict, max_new_tokens: int, eos_token_ids, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int | None = None, stop: threading.Event | None = None,
                  lean_steps: bool = True, constrain=None) -> Iterator[int]:
    """Yield new token ids for one request (batch of 1) until an end token, ``max_new_tokens`` or ``stop``.
    With ``lean_steps``, a Llama language model decodes through ``llama_step`` after the prefill. ``constrain``:
    an object whose ``apply(new_ids, logits)`` may mask the logits before each pick
    (``pathvlm.vlm.token_grounding``)."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("decode_tokens takes one request; use model.generate for batches")
    eos = set(eos_token_ids if isinstance(eos_token_ids, (list, tuple, set)) else [eos_token_ids])
    generator = None
    if not seed_in_range(seed):
        raise ValueError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {seed!r}")
    if effective_temperature(temperature) > 0 and seed is not None:
        generator = torch.Generator(device=inputs["input_ids"].device).manual_seed(seed)
    external = getattr(model, "pathvlm_llamacpp", None)  # quantize q8_0: the language model runs in llama.cpp
    stepper = None
    if external is not None:
        embeds = model.model.prompt_embeddings(inputs["input_ids"], inputs.get("pixel_values"))
        logits, stepper = external.prefill(embeds[0]), external
    else:
        out = model(input_ids=inputs["input_ids"], pixel_values=inputs.get("pixel_values"),
                    attention_mask=inputs.get("attention_mask"), use_cache=True, logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1]
        if lean_steps and llama_step.supports(model) and cache is not None:
            stepper = llama_step.LlamaStepper(model, cache, max_new_tokens)
    new_ids: list[int] = []
    for _ in range(max_new_tokens):
        check_cancelled()  # a deadline passed or the client went away: stop between tokens
        if constrain is not None:
            logits = constrain.apply(new_ids, logits)
        token = _pick(logits, temperature, top_p, generator)
        tid = int(token)
        new_ids.append(tid)
        yield tid
        if tid in eos or (stop is not None and stop.is_set()):
            return
        if stepper is not None:
            logits = stepper.step(tid)
        else:
            out = model(input_ids=token.view(1, 1), cache=cache, use_cache=True, logits_to_keep=1)
            cache, logits = out.cache, out.logits[:, -1]


def stream_text(tokenizer, token_ids: Iterator[int], collected: list | None = None) -> Iterator[str]:
    """Turn token ids into text pieces as they arrive (never splitting a multi-byte character)."""
    ids = collected if collected is not None else []
    sent = ""
    for tid in token_ids:
        ids.append(tid)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 sequence: wait for the next token
            continue
        if len(text) > len(sent):
            yield text[len(sent):]
            sent = text
