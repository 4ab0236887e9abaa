"""The HTTP API: OpenAI-compatible chat completions, zero-shot classification, search, health.

Routes (all JSON; POST bodies must be ``application/json``):

- ``POST /v1/chat/completions`` -- OpenAI chat format, ``stream`` true (server-sent events in
  OpenAI's chunk format) or false. Images only as base64 ``data:`` URLs in ``image_url`` parts;
  remote URLs are refused (400) and never fetched. The reasoning goes in ``reasoning_content``.
- ``POST /v1/classify`` -- an image plus ``labels`` (list or comma-separated) or a ``preset`` task.
- ``POST /v1/search`` -- ``text`` or ``image``, ``k``: gallery hits with scores and provenance.
- ``GET /v1/gallery/{path}`` -- the image of an indexed gallery item (nothing else is served).
- ``GET /v1/models``, ``GET /health``; the schema at ``/openapi.json``, docs at ``/docs``.

Errors are JSON bodies ``{"error": {"message", "type", "code"}}`` with the HTTP status: 400 bad
request, 401 missing or wrong credential (when auth is on), 404, 413 too large, 415 not JSON,
501 feature off, 502 backend failed, 503 busy, 504 timeout, 500 (logged, no traceback sent).
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import time
import uuid
from typing import Literal, Union

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from pathvlm.errors import PathVLMError
from pathvlm.serving.errors import PayloadTooLarge, RequestError
from pathvlm.serving.service import PathVLMService, parse_openai_messages
from pathvlm.serving.thinking import ThinkSplitter

log = logging.getLogger("pathvlm.serve")
API_PREFIXES = ("/v1/",)


# ---------------------------------------------------------------------- request models
class ImageURL(BaseModel):
    url: str = Field(description="a base64 data URL: data:image/png;base64,... (remote URLs are refused)")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: Union[ImageURL, str, None] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="the served model's name (see /v1/models); optional")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only one choice is generated")


class ClassifyRequest(BaseModel):
    image: str = Field(description="base64 data URL (or bare base64) of a PNG/JPEG/TIFF patch")
    labels: Union[list[str], str, None] = Field(None, description="class names; 'name|synonym' adds synonyms")
    preset: str | None = Field(None, description="a shipped prompt set, e.g. crc100k, lc25000_colon (see pathvlm tasks)")
    top_k: int = Field(5, ge=1, le=100)


class SearchRequest(BaseModel):
    text: str | None = Field(None, description="a text query")
    image: str | None = Field(None, description="or an image (base64 data URL) for similar cases")
    k: int = Field(8, ge=1)


# ---------------------------------------------------------------------- helpers
def error_response(status: int, message: str, kind: str = "invalid_request_error", headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)


def _credentials_ok(header: str | None, auth: str | None, token: str | None) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and token:
        return hmac.compare_digest(value.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            user_pass = base64.b64decode(value, validate=True).decode()
        except Exception:
            return False
        if auth and hmac.compare_digest(user_pass.encode(), auth.encode()):
            return True
        if token and hmac.compare_digest(user_pass.partition(":")[2].encode(), token.encode()):
            return True
    return False


class GuardMiddleware:
    """Pure ASGI: for /v1/ routes, auth (401), JSON content type (415) and body size (413, counted while reading)."""

    def __init__(self, app, max_body: int, auth: str | None, token: str | None):
        self.app, self.max_body, self.auth, self.token = app, max_body, auth, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIXES):
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if self.auth or self.token:
            if not _credentials_ok(headers.get("authorization"), self.auth, self.token):
                challenge = 'Bearer realm="pathvlm"' if self.token else 'Basic realm="pathvlm"'
                resp = error_response(401, "missing or wrong credential: send Authorization: Bearer <token> "
                                           "or HTTP basic auth", "unauthorized", {"WWW-Authenticate": challenge})
                return await resp(scope, receive, send)
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                resp = error_response(415, f"content type must be application/json, got {ctype or 'none'!r}",
                                      "unsupported_media_type")
                return await resp(scope, receive, send)
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                resp = error_response(413, f"request body of {length} bytes exceeds the limit of {self.max_body} bytes",
                                      "payload_too_large")
                return await resp(scope, receive, send)
            seen = 0

            async def limited_receive():
                nonlocal seen
                msg = await receive()
                if msg["type"] == "http.request":
                    seen += len(msg.get("body", b""))
                    if seen > self.max_body:
                        raise PayloadTooLarge(f"request body exceeds the limit of {self.max_body} bytes")
                return msg

            try:
                return await self.app(scope, limited_receive, send)
            except PayloadTooLarge as e:
                return await error_response(413, str(e), "payload_too_large")(scope, receive, send)
        return await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", []) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


# ---------------------------------------------------------------------- the app
def create_api(service: PathVLMService, app: FastAPI | None = None) -> FastAPI:
    """Add the API routes, error handlers and guard middleware to ``app`` (a new FastAPI app by default)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(_app):
        import anyio.to_thread

        # waiting requests are bounded by the gates; leave room so admission itself never queues for a thread
        anyio.to_thread.current_default_thread_limiter().total_tokens = 200
        yield

    app = app or FastAPI(title="pathvlm", version="1", lifespan=lifespan,
                         description="Pathology vision-language API: OpenAI-compatible chat, zero-shot classification, "
                                     "gallery search. Images are base64 data URLs only.")
    cfg = service.config
    lim = service.limits
    max_body = lim.max_upload_bytes * 4 // 3 + 256 * 1024  # base64 plus room for the JSON around it
    app.add_middleware(GuardMiddleware, max_body=max_body, auth=cfg.auth, token=cfg.token)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return error_response(exc.status, str(exc), exc.kind)

    @app.exception_handler(PathVLMError)
    async def _pathvlm_error(request, exc: PathVLMError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return error_response(400, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); details are in the server log", "internal_error")

    @app.get("/health", tags=["status"])
    def health():
        return service.health()

    @app.get("/v1/models", tags=["chat"])
    def models():
        names = [n for n in (service.reasoner_name, service.clip_name) if n]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "pathvlm"} for n in names]}

    @app.post("/v1/classify", tags=["clip"])
    async def classify(req: ClassifyRequest):
        def work():  # the image is decoded once admitted: a full queue answers 503 without decoding anything
            return service.classify(lambda: service.image_from_payload(req.image), labels=req.labels,
                                    preset=req.preset, top_k=req.top_k)

        return await run_in_threadpool(work)

    @app.post("/v1/search", tags=["clip"])
    async def search(req: SearchRequest):
        if (req.text is None) == (req.image is None):
            raise RequestError("give exactly one of text or image")

        def work():
            if req.text is not None:
                hits = service.search_text(req.text, req.k)
            else:
                hits = service.search_image(lambda: service.image_from_payload(req.image), req.k)
            for h in hits:
                h.pop("image_path")  # server paths stay private; fetch images by url
                h["url"] = f"/v1/gallery/{h['path']}"
            return {"model": service.clip_name, "query": "text" if req.text is not None else "image", "results": hits}

        return await run_in_threadpool(work)

    @app.get("/v1/gallery/{path:path}", tags=["clip"])
    def gallery_image(path: str):
        return FileResponse(service.gallery_file(path))

    @app.post("/v1/chat/completions", tags=["chat"])
    async def chat_completions(req: ChatCompletionRequest):
        allowed = {n for n in (service.reasoner_name, "pathvlm", "default") if n}
        if req.model and service.generator is not None and req.model not in allowed:
            raise RequestError(f"model {req.model!r} is not served here; use {service.reasoner_name!r} (see /v1/models)",
                               status=404, kind="model_not_found")
        model_name = service.reasoner_name or "none"
        raw = [m.model_dump() for m in req.messages]
        for m in raw:
            if isinstance(m["content"], list):
                for p in m["content"]:
                    if isinstance(p.get("image_url"), dict):
                        p["image_url"] = p["image_url"]["url"]
        gen = {"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed}
        max_new = req.max_completion_tokens or req.max_tokens
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        if not req.stream:
            def work():  # a place in the queue first: a full queue answers 503 before any image is decoded
                ticket, (images, messages) = service.admit_then("generate", lambda: parse_openai_messages(service, raw))
                return service.chat(images, messages, max_new_tokens=max_new, ticket=ticket, **gen)

            r = await run_in_threadpool(work)
            usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                     "total_tokens": (r.prompt_tokens or 0) + (r.completion_tokens or 0)}
            return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "finish_reason": r.finish_reason,
                                 "message": {"role": "assistant", "content": r.answer, "reasoning_content": r.thinking}}],
                    "usage": usage}

        def start():
            ticket, (images, messages) = service.admit_then("generate", lambda: parse_openai_messages(service, raw))
            it = service.chat_stream(images, messages, max_new_tokens=max_new, ticket=ticket, **gen)
            n = it.max_new_tokens
            try:  # wait for a slot and the first piece here, so busy and bad requests get a real HTTP status
                first = next(it)
            except StopIteration:
                first = None
            except BaseException:
                it.close()
                raise
            return it, first, n

        it, first, n = await run_in_threadpool(start)

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        def events():
            splitter = ThinkSplitter()
            pieces = 0
            yield chunk({"role": "assistant", "content": ""})
            try:
                stream = ([first] if first is not None else [])
                for piece in _chain(stream, it):
                    pieces += 1
                    for channel, text in splitter.feed(piece):
                        yield chunk({"reasoning_content" if channel == "reasoning" else "content": text})
                for channel, text in splitter.flush():
                    yield chunk({"reasoning_content" if channel == "reasoning" else "content": text})
                yield chunk({}, "length" if pieces >= n else "stop")
            except PathVLMError as e:
                status = getattr(e, "status", 400)
                yield f"data: {json.dumps({'error': {'message': str(e), 'type': getattr(e, 'kind', 'error'), 'code': status}})}\n\n"
            except Exception as e:
                log.exception("internal error while streaming")
                yield f"data: {json.dumps({'error': {'message': f'internal error ({type(e).__name__})', 'type': 'internal_error', 'code': 500}})}\n\n"
            finally:
                it.close()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _chain(first: list, rest):
    yield from first
    yield from rest
