"""Where generation runs: the local reasoner (``pathvlm.chat``) or an external OpenAI-compatible server.

Both take the reasoner's request form: PIL images plus OpenAI-style messages whose content is a
string or parts ``{"type": "text"}`` / ``{"type": "image"}`` (one image placeholder per image).
``stream`` yields raw text pieces; reasoning from a remote server's ``reasoning_content`` is wrapped
in ``<think>`` tags so both backends look the same to :mod:`pathvlm.serving.thinking`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from pathvlm.cancel import check_cancelled
from pathvlm.errors import PathVLMError
from pathvlm.serving.dataurl import image_to_data_url
from pathvlm.serving.errors import RequestError
from pathvlm.serving.thinking import split_thinking

REPORT_PROMPT = (
    "Write a structured pathology report for this image patch in markdown with the sections "
    "## Specimen, ## Findings, ## Impression and ## Limitations. Describe only what is visible."
)


@dataclass
class Generation:
    text: str
    thinking: str | None
    answer: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    domain: dict | None = None  # the images' domain check (pathvlm.domain), set by the service


class LocalReasoner:
    """The in-process reasoner: ``pathvlm.chat.load_reasoner(source)`` (a bundled name or a saved folder)."""

    kind = "local"

    def __init__(self, source: str, device: str = "cpu", quantize: str = "none", ground_options: bool = True,
                 ground_verdicts: bool = True):
        try:
            from pathvlm import chat
        except ImportError as e:
            raise PathVLMError(f"the reasoner is not available in this pathvlm ({e}); start with --reasoner none") from None
        self._chat = chat
        self.reasoner = chat.load_reasoner(source=source, device=device, quantize=quantize)
        self.source = source
        self.name = Path(source).name if Path(source).exists() else source
        self.ground_options = ground_options  # multiple-choice letters follow the option the reasoning names
        self.ground_verdicts = ground_verdicts  # yes/no answers follow the class the reasoning describes

    @property
    def limits(self):
        return getattr(self.reasoner, "limits", None)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._chat.ChatRequestError as e:
            raise RequestError(str(e)) from None

    def count_prompt_tokens(self, messages, n_images: int) -> int | None:
        return self._call(self.reasoner.count_prompt_tokens, messages, n_images=n_images)

    def generate(self, images, messages, **gen) -> Generation:
        r = self._call(self.reasoner.chat, images, messages, stream=False, ground_options=self.ground_options,
                       ground_verdicts=self.ground_verdicts, **gen)
        return Generation(r.text, r.thinking, r.answer, r.prompt_tokens, r.completion_tokens, r.finish_reason)

    def stream(self, images, messages, **gen) -> Iterator[str]:
        it = self._call(self.reasoner.chat, images, messages, stream=True, ground_options=self.ground_options,
                        ground_verdicts=self.ground_verdicts, **gen)
        # validation errors may surface on the first step of a generator
        try:
            first = self._call(next, it)
        except StopIteration:
            return
        yield first
        try:
            yield from it
        finally:
            if hasattr(it, "close"):
                it.close()

    def report(self, image, max_new_tokens: int) -> Generation:
        r = self._call(self.reasoner.report, image, max_new_tokens=max_new_tokens)
        return Generation(r.text, r.thinking, r.answer, r.prompt_tokens, r.completion_tokens, r.finish_reason)


class OpenAIBackend:
    """An external OpenAI-compatible server (vLLM, TGI, another pathvlm serve) at ``base_url``."""

    kind = "remote"
    limits = None

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout_s: float = 120.0):
        import httpx

        url = base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise PathVLMError(f"--backend-url must start with http:// or https://, got {base_url!r}")
        self.url = url if url.endswith("/v1") else url + "/v1"
        self.model = model
        self.name = model or "remote"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers)

    def count_prompt_tokens(self, messages, n_images: int) -> int | None:
        return None  # the remote server enforces its own context length

    def _payload(self, images, messages, stream: bool, max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> dict:
        urls = [image_to_data_url(im) if isinstance(im, Image.Image) else im for im in images]
        out, pending = [], list(urls)
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                if pending and m["role"] == "user" and not any(isinstance(x["content"], list) for x in messages):
                    content = [{"type": "image_url", "image_url": {"url": u}} for u in pending] + [{"type": "text", "text": content}]
                    pending = []
            else:
                parts = []
                for p in content:
                    if p.get("type") == "image":
                        if not pending:
                            raise RequestError("more image placeholders than images")
                        parts.append({"type": "image_url", "image_url": {"url": pending.pop(0)}})
                    else:
                        parts.append(p)
                content = parts
            out.append({"role": m["role"], "content": content})
        body = {"messages": out, "stream": stream, "max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        if self.model:
            body["model"] = self.model
        if seed is not None:
            body["seed"] = seed
        return body

    def _error(self, e) -> RequestError:
        return RequestError(f"generation backend {self.url} failed: {e}", status=502, kind="backend_error")

    def generate(self, images, messages, max_new_tokens: int = 256, **gen) -> Generation:
        import httpx

        try:
            r = self.client.post(self.url + "/chat/completions", json=self._payload(images, messages, False, max_new_tokens, **gen))
        except httpx.HTTPError as e:
            raise self._error(f"{type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise self._error(f"HTTP {r.status_code}: {r.text[:300]}")
        try:
            data = r.json()
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
            reasoning = choice["message"].get("reasoning_content")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise self._error(f"not an OpenAI chat completion ({type(e).__name__}: {e})") from None
        text = f"<think>{reasoning}</think>{content}" if reasoning else content
        thinking, answer = split_thinking(text)
        usage = data.get("usage") or {}
        return Generation(text, thinking, answer, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                          choice.get("finish_reason") or "stop")

    def stream(self, images, messages, max_new_tokens: int = 256, **gen) -> Iterator[str]:
        import httpx

        body = self._payload(images, messages, True, max_new_tokens, **gen)
        in_reasoning = False
        try:
            with self.client.stream("POST", self.url + "/chat/completions", json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._error(f"HTTP {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    check_cancelled()  # the request was abandoned: closing the stream makes the backend stop too
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise self._error(f"bad stream chunk {data[:100]!r}") from None
                    if "error" in chunk:
                        raise self._error(chunk["error"].get("message", chunk["error"]))
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta") or {}
                        if delta.get("reasoning_content"):
                            yield ("" if in_reasoning else "<think>") + delta["reasoning_content"]
                            in_reasoning = True
                        if delta.get("content"):
                            yield ("</think>" if in_reasoning else "") + delta["content"]
                            in_reasoning = False
        except httpx.HTTPError as e:
            raise self._error(f"{type(e).__name__}: {e}") from None
        if in_reasoning:
            yield "</think>"

    def report(self, image, max_new_tokens: int) -> Generation:
        return self.generate([image], [{"role": "user", "content": REPORT_PROMPT}], max_new_tokens=max_new_tokens)
