"""``pathvlm serve`` settings: dataclasses filled from a YAML file, then from command-line flags.

YAML layout (every field optional)::

    host: 127.0.0.1
    port: 7860
    clip: pathclip-nano
    reasoner: pathvlm-nano        # a bundled name, a saved folder, or "none"
    quantize: none                # int8 (torch int8 kernels) or q8_0 (llama.cpp, GGUF Q8_0): the local reasoner on CPU
    ground_options: true          # multiple-choice letters follow the option the reasoning names (local reasoner)
    ground_verdicts: true         # yes/no answers follow the class the reasoning describes (local reasoner)
    backend_url: null             # an external OpenAI-compatible server (vLLM, TGI) for generation
    gallery: null                 # folder of tiles (default: the demo gallery, built on first use)
    limits:
      max_upload_bytes: 10000000
      generate_concurrency: 1
      generate_max_waiting: 8
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pathvlm.errors import PathVLMError
from pathvlm.yaml_io import read_yaml_mapping

DEFAULT_REASONER = "pathvlm-nano"


@dataclass
class ServeLimits:
    max_upload_bytes: int = field(default=10_000_000, metadata={"help": "largest image upload in bytes (413 above)"})
    max_image_pixels: int = field(default=25_000_000, metadata={"help": "largest decoded image (a bomb check)"})
    max_prompt_tokens: int = field(default=8192, metadata={"help": "longest prompt the server takes; the model's own "
                                                           "limit (its context less max_new_tokens) applies too"})
    max_prompt_chars: int = field(default=20_000, metadata={"help": "longest conversation text before tokenising"})
    max_new_tokens: int = field(default=2048, metadata={"help": "cap on generated tokens per request; the model's own "
                                                        "cap (a quarter of its context, at most 4096) applies too"})
    max_images: int = field(default=1, metadata={"help": "images per chat request"})
    max_labels: int = field(default=64, metadata={"help": "classes per zero-shot request"})
    max_k: int = field(default=50, metadata={"help": "largest k for search"})
    generate_concurrency: int = field(default=1, metadata={"help": "chat/report requests run at once"})
    generate_max_waiting: int = field(default=8, metadata={"help": "chat/report requests that may wait; more get 503"})
    embed_concurrency: int = field(default=2, metadata={"help": "classify/search requests run at once"})
    embed_max_waiting: int = field(default=16, metadata={"help": "classify/search requests that may wait; more get 503"})
    queue_timeout_s: float = field(default=60.0, metadata={"help": "longest wait for a slot before 503"})
    request_timeout_s: float = field(default=120.0, metadata={"help": "longest run of one request before 504"})
    max_queued_pixels: int = field(default=100_000_000, metadata={
        "help": "pixels (from image headers) of all requests waiting or running; a request that does not fit gets 503"})
    max_classify_prompts: int = field(default=2048, metadata={
        "help": "prompts one zero-shot request may embed (classes x synonyms x templates)"})
    class_cache_size: int = field(default=4096, metadata={"help": "class embeddings kept in the LRU cache"})
    max_failed_logins: int = field(default=5, metadata={
        "help": "failed logins (web or API) one client may make per login_window_s before 429"})
    login_window_s: float = field(default=300.0, metadata={"help": "window of the failed-login count"})
    header_timeout_s: float = field(default=10.0, metadata={
        "help": "a request's headers must arrive within this many seconds (slow-header clients are cut off)"})
    body_timeout_s: float = field(default=30.0, metadata={
        "help": "longest pause while a request body is being received (408 after it)"})
    max_connections: int = field(default=256, metadata={"help": "open connections; more get 503 (uvicorn)"})

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_image_pixels", "max_images", "max_queued_pixels", "max_classify_prompts",
                     "max_failed_logins", "max_connections"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise PathVLMError(f"limits.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("header_timeout_s", "body_timeout_s", "login_window_s", "queue_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise PathVLMError(f"limits.{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if self.max_queued_pixels < self.max_image_pixels:
            raise PathVLMError(f"limits.max_queued_pixels ({self.max_queued_pixels}) must be at least "
                               f"max_image_pixels ({self.max_image_pixels}), or no image of the largest size could run")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    clip: str = "pathclip-nano"
    reasoner: str | None = None  # None: the bundled pathvlm-nano if it loads, else chat is off (with a message)
    backend_url: str | None = None
    backend_model: str | None = None
    backend_api_key: str | None = None
    gallery: str | None = None
    index: str | None = None
    device: str = "cpu"
    quantize: str = "none"  # the local reasoner's language model: none, int8 or q8_0 (pathvlm.vlm.quantize)
    ground_options: bool = True  # pathvlm.vlm.option_grounding, for the local reasoner
    ground_verdicts: bool = True  # pathvlm.vlm.verdict_grounding, for the local reasoner
    auth: str | None = None   # "user:pass" for the web app and HTTP basic auth on the API
    token: str | None = None  # bearer token for the API (and the web app's password)
    share: bool = False
    limits: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self):
        if isinstance(self.limits, dict):
            self.limits = limits_from_dict(self.limits)
        if self.auth is not None and (":" not in self.auth or not self.auth.split(":", 1)[0] or not self.auth.split(":", 1)[1]):
            raise PathVLMError("--auth must be USER:PASSWORD with both parts non-empty")
        if self.token is not None and len(self.token) < 8:
            raise PathVLMError("--token must be at least 8 characters")
        if self.share and not self.auth_enabled:
            raise PathVLMError("--share publishes the app on the internet: it is refused unless --auth or --token is set")
        from pathvlm.vlm.quantize import QUANTIZE_MODES

        if str(self.quantize).lower() not in QUANTIZE_MODES:
            raise PathVLMError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {self.quantize!r}")
        self.quantize = str(self.quantize).lower()
        if self.reasoner is not None and self.reasoner.strip().lower() in ("none", "off", ""):
            self.reasoner = "none"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth or self.token)

    def public_dict(self) -> dict:
        d = asdict(self)
        for secret in ("auth", "token", "backend_api_key"):
            d[secret] = "***" if d[secret] else None
        return d


def limits_from_dict(data: dict) -> ServeLimits:
    known = {f.name for f in fields(ServeLimits)}
    unknown = set(data) - known
    if unknown:
        raise PathVLMError(f"unknown limits: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return ServeLimits(**data)


def load_serve_config(path: str | os.PathLike | None = None, **overrides) -> ServeConfig:
    """YAML file (optional) then keyword overrides (None means "not given")."""
    data = read_yaml_mapping(path, "serve config") if path else {}
    known = {f.name for f in fields(ServeConfig)}
    unknown = set(data) - known
    if unknown:
        raise PathVLMError(f"{path}: unknown fields {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    limits = dict(data.pop("limits", None) or {})
    limits.update(overrides.pop("limits", None) or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    if path and data.get("gallery"):
        g = Path(data["gallery"]).expanduser()
        data["gallery"] = str(g if g.is_absolute() else (Path(path).parent / g).resolve())
    return ServeConfig(**data, limits=limits_from_dict(limits))
