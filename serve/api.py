"""The HTTP API: OpenAI-compatible chat completions, zero-shot classification, search, health.

Routes (all JSON; POST bodies must be ``application/json``):

- ``POST /v1/chat/completions`` -- OpenAI chat format, ``stream`` true (server-sent events in
  OpenAI's chunk format) or false. Images only as base64 ``data:`` URLs in ``image_url`` parts;
  remote URLs are refused (400) and never fetched. The reasoning goes in ``reasoning_content``.
- ``POST /v1/classify`` -- an image plus ``labels`` (list or comma-separated) or a ``preset`` task.
- ``POST /v1/search`` -- ``text`` or ``image``, ``k``: gallery hits with scores and provenance.
- ``POST /v1/report`` -- an image: a structured report (markdown) from the reasoner.

Responses about an image (classify, image search, chat completions, report) carry a ``domain``
field: whether the image lies inside the model's training domain (:mod:`pathvlm.domain`).
- ``GET /v1/gallery/{path}`` -- the image of an indexed gallery item (nothing else is served).
- ``GET /v1/models``, ``GET /health``; the schema at ``/openapi.json``, docs at ``/docs``.

Errors are JSON bodies ``{"error": {"message", "type", "code"}}`` with the HTTP status: 400 bad
request, 401 missing or wrong credential (when auth is on), 404, 405 wrong method, 408 body too
slow, 413 too large, 415 not JSON, 429 too many failed logins, 501 feature off, 502 backend failed,
503 busy, 504 timeout, 500 (logged, no traceback sent). A client that disconnects cancels its
request, waiting or running (see :mod:`serve.disconnect`).
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from pathvlm.cancel import Cancelled
from pathvlm.errors import PathVLMError
from pathvlm.sampling import SEED_RANGE
from pathvlm.serving.auth import LoginThrottle
from pathvlm.serving.errors import RequestError
from pathvlm.serving.service import PathVLMService, parse_openai_messages
from pathvlm.serving.thinking import ThinkSplitter
from serve.disconnect import cancel_when_abandoned, run_cancellable
from serve.middleware import GuardMiddleware

log = logging.getLogger("pathvlm.serve")


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
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(1, ge=1, le=1, description="only one choice is generated")


class ClassifyRequest(BaseModel):
    image: str = Field(description="base64 data URL (or bare base64) of a PNG/JPEG/TIFF patch")
    labels: Union[list[str], str, None] = Field(None, description="class names; 'name|synonym' adds synonyms")
    preset: str | None = Field(None, description="the name of a shipped prompt set, e.g. crc100k, lc25000_colon "
                                                 "(see pathvlm tasks); never a path")
    top_k: int = Field(5, ge=1, le=100)


class ReportRequest(BaseModel):
    image: str = Field(description="base64 data URL (or bare base64) of a PNG/JPEG/TIFF patch")
    max_tokens: int | None = Field(None, ge=1, description="tokens per generated section (default 160)")


class SearchRequest(BaseModel):
    text: str | None = Field(None, description="a text query")
    image: str | None = Field(None, description="or an image (base64 data URL) for similar cases")
    k: int = Field(8, ge=1)


# ---------------------------------------------------------------------- helpers
def error_response(status: int, message: str, kind: str = "invalid_request_error", headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)


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
    throttle = LoginThrottle(lim.max_failed_logins, lim.login_window_s)
    app.add_middleware(GuardMiddleware, api=app, max_body=max_body, auth=cfg.auth, token=cfg.token, throttle=throttle,
                       body_timeout_s=lim.body_timeout_s)
    app.state.service = service
    app.state.login_throttle = throttle

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return error_response(exc.status, str(exc), exc.kind)

    @app.exception_handler(Cancelled)
    async def _cancelled(request, exc: Cancelled):  # the client has gone; nginx's "client closed request"
        return error_response(499, str(exc), "cancelled")

    @app.exception_handler(PathVLMError)
    async def _pathvlm_error(request, exc: PathVLMError):
        return error_response(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        return error_response(exc.status_code, _http_error_message(exc), _HTTP_KINDS.get(exc.status_code, "error"),
                              getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        return error_response(400, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request, exc: Exception):
        log.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); details are in the server log", "internal_error")

    @app.get("/health", tags=["status"])
    def health():
        return {**service.health(), "logins": throttle.stats()}

    @app.get("/v1/models", tags=["chat"])
    def models():
        names = [n for n in (service.reasoner_name, service.clip_name) if n]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "pathvlm"} for n in names]}

    @app.post("/v1/classify", tags=["clip"])
    async def classify(req: ClassifyRequest, request: Request):
        def work():  # the image is read once admitted: a full queue answers 503 without reading anything
            return service.classify(lambda: service.image_from_payload(req.image), labels=req.labels,
                                    preset=req.preset, top_k=req.top_k)

        return await run_cancellable(request, work)

    @app.post("/v1/search", tags=["clip"])
    async def search(req: SearchRequest, request: Request):
        if (req.text is None) == (req.image is None):
            raise RequestError("give exactly one of text or image")

        def work():
            domain = {}
            if req.text is not None:
                hits = service.search_text(req.text, req.k)
            else:
                hits, verdict = service.search_image_checked(lambda: service.image_from_payload(req.image), req.k)
                domain = {"domain": verdict}
            for h in hits:
                h.pop("image_path")  # server paths stay private; fetch images by url
                h["url"] = f"/v1/gallery/{h['path']}"
            return {"model": service.clip_name, "query": "text" if req.text is not None else "image", "results": hits,
                    **domain}

        return await run_cancellable(request, work)

    @app.post("/v1/report", tags=["chat"])
    async def report(req: ReportRequest, request: Request):
        def work():  # the image is read once admitted, as for /v1/classify
            r = service.report(lambda: service.image_from_payload(req.image), max_new_tokens=req.max_tokens)
            return {"model": service.reasoner_name, "report": r.text, "impression": r.answer,
                    "reasoning": r.thinking, "domain": r.domain}

        return await run_cancellable(request, work)

    @app.get("/v1/gallery/{path:path}", tags=["clip"])
    def gallery_image(path: str):
        return FileResponse(service.gallery_file(path))

    @app.post("/v1/chat/completions", tags=["chat"])
    async def chat_completions(req: ChatCompletionRequest, request: Request):
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

            r = await run_cancellable(request, work)
            usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                     "total_tokens": (r.prompt_tokens or 0) + (r.completion_tokens or 0)}
            return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                    "choices": [{"index": 0, "finish_reason": r.finish_reason,
                                 "message": {"role": "assistant", "content": r.answer, "reasoning_content": r.thinking}}],
                    "usage": usage, "domain": r.domain}

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

        it, first, n = await run_cancellable(request, start)

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        def events():
            splitter = ThinkSplitter()
            pieces = 0
            yield chunk({"role": "assistant", "content": ""}, domain=getattr(it, "domain", None))
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

        return StreamingResponse(cancel_when_abandoned(events(), it), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


_HTTP_KINDS = {400: "invalid_request_error", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_request_error"}


def _http_error_message(exc: StarletteHTTPException) -> str:
    """FastAPI's body-parsing failures name their cause; say it plainly."""
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start}); JSON must be UTF-8"
    if isinstance(cause, RecursionError):
        return "request body JSON is nested too deeply"
    if cause is not None and exc.status_code == 400:
        return f"request body could not be parsed as JSON ({type(cause).__name__})"
    return exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)


def _chain(first: list, rest):
    yield from first
    yield from rest
