"""Chat with a PathVLM reasoner: ``pathvlm.chat(images, messages, stream=True)``.

>>> import pathvlm
>>> for piece in pathvlm.chat(["tile.png"], [{"role": "user", "content": "Is this benign? Answer yes or no."}], stream=True):
...     print(piece, end="")

``load_reasoner(source)`` gives a :class:`Reasoner` (cached per source and device) with ``chat``
(token streaming through the KV cache, max new tokens, temperature/top-p, seed), ``report`` (a
structured report from a fixed template) and ``count_prompt_tokens``. Requests are validated
before any compute: an image question without an image, an image that is not an image, too many
images, an empty message, unknown roles and prompts over the token limit raise
:class:`ChatRequestError` with a message naming the problem.
"""
from __future__ import annotations

import re
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Iterator

from pathvlm.cancel import check_cancelled, current_token
from pathvlm.errors import ImageError, PathVLMError
from pathvlm.images import DEFAULT_MAX_BYTES, load_image

ROLES = ("system", "user", "assistant")
CANNOT_DETERMINE = "cannot determine"
THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)
ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)

REPORT_DESCRIBE = "Describe the histological features of this image."
REPORT_DIAGNOSE = ("What is the most likely diagnosis for this H&E image? Think step by step inside "
                   "<think></think>, then give the final answer inside <answer></answer>.")


class ChatRequestError(PathVLMError):
    """A chat request that cannot be answered as given (the message says why)."""


DEFAULT_NEW_TOKENS = 256  # generated tokens when a request names no number (capped by the model's limit)
MAX_NEW_TOKENS_CEILING = 4096  # no model gets a larger output cap than this by default


@dataclass(frozen=True)
class ChatLimits:
    """Per-request limits. :func:`load_reasoner` derives them from the model (:func:`derive_limits`); these
    defaults apply only to a ``ChatLimits()`` built by hand."""
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 512
    max_images: int = 4
    max_image_pixels: int = 25_000_000  # about 5000 x 5000: patches, not whole slides
    max_image_bytes: int = 32 * 1024 * 1024
    max_message_chars: int = 8000


def context_length(model) -> int | None:
    """The language model's context (``max_position_embeddings``), wherever the config keeps it."""
    cfg = model.config
    for c in (getattr(cfg, "text_config", None), cfg):
        n = getattr(c, "max_position_embeddings", None) if c is not None else None
        if isinstance(n, int) and n > 0:
            return n
    return None


def image_tokens_max(model, processor) -> int:
    """The most prompt tokens one image can take with this processor: a fixed count for LLaVA-style and PathVLM
    models, ``max_pixels / (patch * merge)^2`` (+ start/end markers) for Qwen2/2.5-VL, whose processor resizes
    every image to at most ``max_pixels``."""
    ip = getattr(processor, "image_processor", None)
    patch, merge = getattr(ip, "patch_size", None), getattr(ip, "merge_size", None)
    max_pixels = getattr(ip, "max_pixels", None)
    size = getattr(ip, "size", None)
    if max_pixels is None and size is not None:  # transformers 5 keeps max_pixels as size["longest_edge"]
        max_pixels = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if max_pixels and patch and merge:
        return int(max_pixels) // (int(patch) * int(merge)) ** 2 + 2
    n = getattr(processor, "image_seq_length", None) or getattr(model.config, "image_seq_length", None)
    return int(n) if n else 1


def derive_limits(model, processor, base: ChatLimits | None = None) -> ChatLimits:
    """Limits that fit this model: output up to a quarter of its context (at most ``MAX_NEW_TOKENS_CEILING``),
    the prompt up to the rest, and as many images (up to ``base.max_images``) as fit the prompt at the image
    processor's largest size. Original-format LLaVA-1.5 models take one image, as they were trained."""
    from dataclasses import replace

    base = base or ChatLimits()
    context = context_length(model)
    if not context:
        return base
    max_new = max(1, min(MAX_NEW_TOKENS_CEILING, context // 4))
    max_prompt = context - max_new
    per_image = image_tokens_max(model, processor)
    max_images = max(1, min(base.max_images, (max_prompt - 256) // max(per_image, 1)))
    if getattr(processor, "llava_info", None):
        max_images = 1
    return replace(base, max_prompt_tokens=max_prompt, max_new_tokens=max_new, max_images=max_images)


@dataclass
class ChatResult:
    text: str
    thinking: str | None
    answer: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    extras: dict = field(default_factory=dict)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """``<think>..</think><answer>..</answer>`` -> (thinking, answer); plain text is all answer."""
    think = THINK_RE.search(text)
    answer = ANSWER_RE.search(text)
    thinking = think.group(1).strip() if think else None
    if answer:
        return thinking, answer.group(1).strip()
    rest = THINK_RE.sub("", text).strip() if think else text.strip()
    return thinking, rest


def _image(source, limits: ChatLimits, index: int):
    if source is None:
        raise ChatRequestError(f"image {index + 1} is empty")
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ChatRequestError(f"image {index + 1} is a remote URL; pathvlm never fetches URLs: send the image data")
    if not isinstance(source, (str, bytes, bytearray)) and not hasattr(source, "convert") and not hasattr(source, "__fspath__"):
        raise ChatRequestError(f"image {index + 1} has type {type(source).__name__}; give a PIL image, a path or bytes")
    try:
        return load_image(source, max_pixels=limits.max_image_pixels, max_bytes=min(limits.max_image_bytes, DEFAULT_MAX_BYTES))
    except ImageError as e:
        raise ChatRequestError(f"image {index + 1}: {e}") from None


def normalise_messages(messages, n_images: int, limits: ChatLimits) -> list[dict]:
    """Validate OpenAI-style messages; return them with list content and image parts placed."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatRequestError("no messages: send at least one user message")
    out, image_parts = [], 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise ChatRequestError(f"message {i + 1} is not a {{'role': ..., 'content': ...}} object")
        role = msg["role"]
        if role not in ROLES:
            raise ChatRequestError(f"message {i + 1} has role {role!r}; roles are {', '.join(ROLES)}")
        content = msg.get("content")
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        elif isinstance(content, (list, tuple)):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text") or "")})
                elif kind in ("image", "image_url"):
                    if role != "user":
                        raise ChatRequestError(f"message {i + 1}: only user messages may carry images")
                    parts.append({"type": "image"})
                    image_parts += 1
                else:
                    raise ChatRequestError(f"message {i + 1} has a content part of type {kind!r}; use 'text' or 'image'")
        else:
            raise ChatRequestError(f"message {i + 1} has no text content")
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        if len(text) > limits.max_message_chars:
            raise ChatRequestError(f"message {i + 1} has {len(text)} characters; the limit is {limits.max_message_chars}")
        out.append({"role": role, "content": parts})
    last = out[-1]
    if last["role"] != "user":
        raise ChatRequestError("the last message must be the user's question")
    if not "".join(p.get("text", "") for p in last["content"] if p["type"] == "text").strip():
        raise ChatRequestError("empty message: ask a question about the image")
    if image_parts == 0 and n_images:  # plain-text content: the images go before the first user text
        first_user = next(m for m in out if m["role"] == "user")
        first_user["content"][:0] = [{"type": "image"} for _ in range(n_images)]
        image_parts = n_images
    if image_parts != n_images:
        raise ChatRequestError(f"the messages place {image_parts} image(s) but {n_images} were given")
    if n_images == 0:
        raise ChatRequestError("no image: PathVLM answers questions about an H&E image; attach one")
    if n_images > limits.max_images:
        raise ChatRequestError(f"{n_images} images; the limit is {limits.max_images} per request")
    return out


class Reasoner:
    """A loaded PathVLM and its processor; thread-safe (one generation at a time)."""

    def __init__(self, model, processor, name: str = "", limits: ChatLimits | None = None,
                 default_system: str | None = None):
        self.model, self.processor, self.name = model, processor, name
        self.limits = limits or derive_limits(model, processor)
        self.default_system = default_system  # the model card's system prompt, used when a request sends none
        self._lock = threading.Lock()

    @property
    def device(self):
        return next(self.model.parameters()).device

    # -- building inputs
    def _with_system(self, messages, system: str | None = None):
        """``system`` (if given) replaces any system message; else the model's default goes in when none is sent."""
        if not isinstance(messages, (list, tuple)):
            return messages
        if system is not None:
            if not isinstance(system, str):
                raise ChatRequestError("the system prompt must be text")
            rest = [m for m in messages if not (isinstance(m, dict) and m.get("role") == "system")]
            return [{"role": "system", "content": system}] + rest if system.strip() else rest
        if self.default_system and not any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            return [{"role": "system", "content": self.default_system}] + list(messages)
        return messages

    def _prepare(self, images, messages, system: str | None = None):
        images = list(images or [])
        imgs = [_image(im, self.limits, i) for i, im in enumerate(images)]
        msgs = normalise_messages(self._with_system(messages, system), len(imgs), self.limits)
        text = self._template(msgs)
        if self._count(text, len(imgs)) > 4 * self.limits.max_prompt_tokens:  # refuse huge prompts before any work
            raise ChatRequestError(f"the prompt is far over the limit of {self.limits.max_prompt_tokens} tokens")
        inputs = self.processor(images=imgs, text=text, return_tensors="pt")
        n_tokens = int(inputs["input_ids"].shape[1])  # image tokens included, whatever the processor's layout
        if n_tokens > self.limits.max_prompt_tokens:
            raise ChatRequestError(f"the prompt has {n_tokens} tokens; the limit is {self.limits.max_prompt_tokens}: "
                                   "shorten the conversation")
        return inputs.to(self.device), n_tokens

    def _template(self, msgs) -> str:
        """The processor's chat template, or pathvlm's ChatML one for processors that ship none."""
        from pathvlm.vlm.processing import CHAT_TEMPLATE

        template = None if getattr(self.processor, "chat_template", None) else CHAT_TEMPLATE
        return self.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                                  chat_template=template)

    def _count(self, text: str, n_images: int) -> int:
        exact = getattr(self.processor, "count_prompt_tokens", None)  # LLaVA's own tokenisation
        if callable(exact):
            return exact(text)
        ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(ids) + n_images * (getattr(self.processor, "image_seq_length", 1) - 1)

    def count_prompt_tokens(self, messages, n_images: int = 1, system: str | None = None) -> int:
        msgs = normalise_messages(self._with_system(messages, system), n_images, self.limits)
        return self._count(self._template(msgs), n_images)

    def _gen_kwargs(self, max_new_tokens, temperature, top_p, seed=None):
        from pathvlm.sampling import SEED_RANGE, effective_temperature, seed_in_range

        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, self.limits.max_new_tokens)
        if not 1 <= int(max_new_tokens) <= self.limits.max_new_tokens:
            context = context_length(self.model)
            why = (f" for this model (a quarter of its {context}-token context, at most {MAX_NEW_TOKENS_CEILING})"
                   if context and self.limits.max_new_tokens == min(MAX_NEW_TOKENS_CEILING, context // 4) else "")
            raise ChatRequestError(f"max_new_tokens must be between 1 and {self.limits.max_new_tokens}{why}")
        if temperature is None or not temperature >= 0 or not (0 < top_p <= 1):
            raise ChatRequestError("temperature must be >= 0 and top_p in (0, 1]")
        if not seed_in_range(seed):
            raise ChatRequestError(f"seed must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]")
        temperature = effective_temperature(temperature)  # tiny temperatures: greedy, or raised to 0.01
        kw = {"max_new_tokens": int(max_new_tokens), "use_cache": True}
        if temperature > 0:
            kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    # -- chat
    def chat(self, images, messages, stream: bool = False, max_new_tokens: int | None = None,
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, system: str | None = None,
             ground_options: bool = False, ground_verdicts: bool = False):
        """Answer the last user message about ``images``; a :class:`ChatResult`, or text pieces with ``stream``.
        ``system`` sets the system prompt (else a system message in ``messages``, else the model's default);
        ``max_new_tokens`` defaults to 256 or the model's cap if lower. ``ground_options``: a multiple-choice
        answer's letter is the letter of the option the reasoning names (``pathvlm.vlm.option_grounding``);
        ``ground_verdicts``: a yes/no answer agrees with the class the reasoning describes
        (``pathvlm.vlm.verdict_grounding``)."""
        from pathvlm.vlm.option_grounding import grounding_kwargs, groundings_for

        inputs, n_prompt = self._prepare(images, messages, system)
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        grounding = groundings_for(self.processor.tokenizer, [messages], ground_options, ground_verdicts)[0]
        if self.lean:
            return self._chat_lean(inputs, n_prompt, kw, temperature, top_p, seed, stream, grounding)
        kw.update(grounding_kwargs([grounding], int(inputs["input_ids"].shape[1])))
        if stream:
            return self._stream(inputs, kw, seed)
        import torch

        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**inputs, **kw, **_stop_when_cancelled())
        check_cancelled()  # stopped early because the request was abandoned: no partial answer
        new = out[0, inputs["input_ids"].shape[1]:]
        return self._result(new, n_prompt, kw["max_new_tokens"])

    @property
    def lean(self) -> bool:
        """PathVLM models decode with the lean loop (``pathvlm.vlm.decode``); others through ``generate``."""
        from pathvlm.vlm.modeling import PathVLMForConditionalGeneration

        return isinstance(self.model, PathVLMForConditionalGeneration)

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def _chat_lean(self, inputs, n_prompt, kw, temperature, top_p, seed, stream, grounding=None):
        import torch

        from pathvlm.vlm.decode import decode_tokens, stream_text

        stop = threading.Event()
        tokens = decode_tokens(self.model, inputs, kw["max_new_tokens"], self._eos_ids(), temperature=temperature,
                               top_p=top_p, seed=seed, stop=stop, constrain=grounding)
        if not stream:
            with self._lock:
                ids = list(tokens)
            return self._result(torch.tensor(ids, dtype=torch.long), n_prompt, kw["max_new_tokens"])
        self.last_stream_stop = stop

        def pieces():
            with self._lock:  # generation runs in the reader's thread: closing the iterator stops it at once
                try:
                    yield from stream_text(self.processor.tokenizer, tokens)
                finally:
                    stop.set()
                    tokens.close()

        return pieces()

    def chat_batch(self, images: list, conversations: list, max_new_tokens: int | None = None,
                   temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                   batch_size: int = 16, progress: bool = False, ground_options: bool = False,
                   ground_verdicts: bool = False) -> list[ChatResult]:
        """Answer many single-image requests, ``batch_size`` at a time (left padding; greedy output equals
        :meth:`chat`'s up to padding numerics). ``images[i]`` goes with ``conversations[i]``; ``ground_options``
        and ``ground_verdicts`` as in :meth:`chat`."""
        import torch

        from pathvlm.vlm.option_grounding import grounding_kwargs, groundings_for

        if len(images) != len(conversations):
            raise ChatRequestError(f"{len(images)} images for {len(conversations)} conversations")
        kw = self._gen_kwargs(max_new_tokens, temperature, top_p, seed)
        if getattr(self.model, "pathvlm_llamacpp", None) is not None:  # llama.cpp decodes one request at a time
            items = zip(images, conversations)
            if progress:
                from tqdm.auto import tqdm

                items = tqdm(items, total=len(images), desc="generating", unit="request")
            from pathvlm.sampling import SEED_RANGE

            return [self.chat([im], conv, max_new_tokens=kw["max_new_tokens"], temperature=temperature, top_p=top_p,
                              seed=None if seed is None else (seed + i) % (SEED_RANGE[1] + 1),
                              ground_options=ground_options, ground_verdicts=ground_verdicts)
                    for i, (im, conv) in enumerate(items)]
        tok = self.processor.tokenizer
        results: list[ChatResult] = []
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="generating", unit="batch")
        for s in starts:
            imgs, texts, counts = [], [], []
            for j in range(s, min(s + batch_size, len(images))):
                img = _image(images[j], self.limits, 0)
                msgs = normalise_messages(self._with_system(conversations[j]), 1, self.limits)
                text = self._template(msgs)
                counts.append(self._count(text, 1))
                if counts[-1] > self.limits.max_prompt_tokens:
                    raise ChatRequestError(f"request {j + 1}: the prompt has {counts[-1]} tokens; the limit is "
                                           f"{self.limits.max_prompt_tokens}")
                imgs.append(img)
                texts.append(text)
            inputs = self.processor(images=imgs, text=texts, return_tensors="pt", padding=True,
                                    padding_side="left").to(self.device)
            grounded = grounding_kwargs(groundings_for(tok, conversations[s:s + len(imgs)], ground_options, ground_verdicts),
                                        int(inputs["input_ids"].shape[1]))
            with self._lock, torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed + s)
                out = self.model.generate(**inputs, **kw, **grounded)
            for row, n in zip(out[:, inputs["input_ids"].shape[1]:], counts):
                if tok.pad_token_id is not None:  # drop the padding after an early stop
                    keep = (row != tok.pad_token_id).nonzero()
                    row = row[: int(keep[-1]) + 1] if len(keep) else row[:0]
                results.append(self._result(row, n, kw["max_new_tokens"]))
        return results

    def _result(self, new_ids, n_prompt: int, max_new: int) -> ChatResult:
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        stopped = len(new_ids) > 0 and int(new_ids[-1]) in eos
        text = self.processor.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        thinking, answer = split_reasoning(text)
        return ChatResult(text=text, thinking=thinking, answer=answer, prompt_tokens=n_prompt,
                          completion_tokens=int(len(new_ids)),
                          finish_reason="stop" if stopped or len(new_ids) < max_new else "length")

    def _stream(self, inputs, kw, seed) -> Iterator[str]:
        """Text pieces as tokens are generated. Closing the iterator early (a client went away, a deadline
        passed) stops generation at the next token and frees the model."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                         timeout=600)
        stop = threading.Event()
        errors = []

        token = current_token()  # generate runs on its own thread: carry the request's cancel token there

        class _StopWhenClosed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = stop.is_set() or (token is not None and token.cancelled)
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        def work():
            try:
                with torch.inference_mode():
                    if seed is not None:
                        torch.manual_seed(seed)
                    self.model.generate(**inputs, **kw, streamer=streamer,
                                        stopping_criteria=StoppingCriteriaList([_StopWhenClosed()]))
            except Exception as e:  # surfaced to the reader below, never lost in the thread
                errors.append(e)
                streamer.on_finalized_text("", stream_end=True)

        def pieces():
            with self._lock:
                thread = threading.Thread(target=work, daemon=True)
                thread.start()
                try:
                    for piece in streamer:
                        if piece:
                            yield piece
                finally:  # normal end, error or early close: stop generating before giving the model back
                    stop.set()
                    thread.join()
            if errors:
                raise PathVLMError(f"generation failed: {type(errors[0]).__name__}: {errors[0]}")

        self.last_stream_stop = stop  # for tests and callers that want to know a stream was cut short
        return pieces()

    # -- report
    def report(self, image, max_new_tokens: int = 160, specimen: str = "H&E-stained tissue patch",
               system: str | None = None) -> ChatResult:
        """A structured report (Specimen / Microscopic findings / Impression) for one patch, as markdown."""
        im = _image(image, self.limits, 0)
        max_new_tokens = min(max_new_tokens, self.limits.max_new_tokens)
        findings = self.chat([im], [{"role": "user", "content": REPORT_DESCRIBE}], max_new_tokens=max_new_tokens,
                             system=system)
        diagnosis = self.chat([im], [{"role": "user", "content": REPORT_DIAGNOSE}], max_new_tokens=max_new_tokens,
                              system=system)
        impression = diagnosis.answer or CANNOT_DETERMINE
        text = "\n".join([
            "# Pathology report (research use only)", "",
            "## Specimen", f"{specimen}, {im.width} x {im.height} px.", "",
            "## Microscopic findings", findings.answer or findings.text or CANNOT_DETERMINE, "",
            "## Impression", impression, "",
            "## Reasoning", diagnosis.thinking or "(none given)", "",
            "## Notes", f"Generated by {self.name or 'PathVLM'} from this image alone; not a diagnosis. "
                        "Findings must be confirmed by a pathologist.", ""])
        return ChatResult(text=text, thinking=diagnosis.thinking, answer=impression,
                          prompt_tokens=findings.prompt_tokens + diagnosis.prompt_tokens,
                          completion_tokens=findings.completion_tokens + diagnosis.completion_tokens,
                          finish_reason=diagnosis.finish_reason,
                          extras={"findings": findings.answer, "impression": impression})


def _stop_when_cancelled() -> dict:
    """``generate`` kwargs that stop at the next token once the current request is cancelled."""
    token = current_token()
    if token is None:
        return {}
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), token.cancelled, dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([_Cancelled()])}


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


PRECISIONS = ("fp32", "bf16")


def load_reasoner(source: str = "pathvlm-nano", device: str = "cpu", limits: ChatLimits | None = None,
                  precision: str = "fp32", vision_tower: str | None = None, template: str | None = None,
                  quantize: str | None = None) -> Reasoner:
    """A :class:`Reasoner` for a bundled name or a folder (cached per source, device and precision): a
    save_pretrained image-text-to-text folder, or an original-format LLaVA checkpoint (Quilt-LLaVA, LLaVA-Med,
    PathGen-LLaVA), converted once into the cache (``vision_tower``: its CLIP folder if ``mm_vision_tower`` is not
    found; ``template``: ``vicuna_v1`` or ``mistral_instruct`` instead of the family default).
    ``precision="bf16"`` halves the weight traffic of decoding (faster on CPUs with bf16 support; answers can
    differ slightly from fp32). ``quantize="int8"`` stores the language model's linear weights as int8 and decodes
    with torch's int8 CPU kernels (``pathvlm.vlm.quantize``); ``quantize="q8_0"`` decodes the language model in
    llama.cpp from a GGUF Q8_0 export (``pathvlm.vlm.llamacpp_lm``; needs llama-cpp-python). Speed and accuracy
    against fp32 are measured in docs/benchmarks.md. Limits are derived from the model (:func:`derive_limits`) unless given."""
    import torch

    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.model_cards import default_system_prompt
    from pathvlm.vlm.quantize import QUANTIZE_MODES, quantize_language_model

    if precision not in PRECISIONS:
        raise ChatRequestError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    quantize = (quantize or "none").lower()
    if quantize not in QUANTIZE_MODES:
        raise ChatRequestError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}")
    if quantize != "none" and precision != "fp32":
        raise ChatRequestError(f"quantize {quantize} keeps float32 activations: use it with precision fp32")
    key = (source, str(device), precision, vision_tower, template, quantize)
    with _CACHE_LOCK:
        if key not in _CACHE:
            model, processor = load_vlm(source, device=device, dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                                        vision_tower=vision_tower, template=template)
            if quantize != "none":
                quantize_language_model(model, quantize, tokenizer=processor.tokenizer)
            _CACHE[key] = Reasoner(model, processor, name=source, default_system=default_system_prompt(source, model))
        reasoner = _CACHE[key]
    if limits is not None:
        reasoner = Reasoner(reasoner.model, reasoner.processor, reasoner.name, limits, reasoner.default_system)
        reasoner._lock = _CACHE[key]._lock
    return reasoner


def chat(images, messages, stream: bool = False, model: str = "pathvlm-nano", device: str = "cpu",
         precision: str = "fp32", quantize: str | None = None, **kwargs):
    """One call: load (cached) ``model`` and answer; see :meth:`Reasoner.chat` (``system=`` sets the system prompt)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if images is not None and not isinstance(images, (list, tuple)):
        images = [images]
    return load_reasoner(model, device, precision=precision, quantize=quantize).chat(images, messages, stream=stream, **kwargs)


class _CallableModule(types.ModuleType):
    """Lets ``pathvlm.chat(...)`` call :func:`chat` while ``from pathvlm.chat import ...`` keeps working."""

    def __call__(self, *args, **kwargs):
        return chat(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
