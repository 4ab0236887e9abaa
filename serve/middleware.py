"""The ASGI guard in front of the whole server (HTTP API and web app).

For every request:

- request bodies are read with a pause limit: a client that stops sending for ``body_timeout_s``
  gets 408 (slow-body clients cannot hold a connection and a worker forever);
- bodies other than the web app's file uploads (which gradio caps at the upload limit) are read
  here, up to ``max_body`` bytes, before the app sees them: over the limit is 413 whether the size
  was declared (``Content-Length``) or not (chunked), and the app gets the whole body at once;
- failed logins are throttled per client (:class:`~pathvlm.serving.auth.LoginThrottle`): the API's
  401s and the web app's refused ``/login`` count together, and a client over the limit gets 429
  with ``Retry-After`` for any request that carries credentials.

For the API (``/v1/...`` and ``/health``): auth (401), the route's methods (405 with ``Allow``),
unknown paths (404), JSON only (415), all answered in the documented ``{"error": {...}}`` form.
"""
from __future__ import annotations

import asyncio
import json
import math

from pathvlm.serving.auth import LoginThrottle, credentials_ok

API_PREFIXES = ("/v1/",)
API_EXACT = ("/health",)
UPLOAD_PATHS = ("/gradio_api/upload",)  # multipart, streamed to disk by gradio with its own size cap
LOGIN_PATHS = ("/login", "/login/")
BODY_METHODS = ("POST", "PUT", "PATCH")


def error_body(status: int, message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


async def send_error(send, status: int, message: str, kind: str, headers: dict | None = None, close: bool = False):
    body = error_body(status, message, kind)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    if close:
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class GuardMiddleware:
    def __init__(self, app, api=None, max_body: int = 14_000_000, auth: str | None = None, token: str | None = None,
                 throttle: LoginThrottle | None = None, body_timeout_s: float = 30.0):
        self.app, self.api, self.max_body, self.auth, self.token = app, api, max_body, auth, token
        self.throttle, self.body_timeout_s = throttle, body_timeout_s

    # ------------------------------------------------------------------ entry
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        is_api = path.startswith(API_PREFIXES) or path in API_EXACT
        client = (scope.get("client") or ("?", 0))[0]
        auth_on = bool(self.auth or self.token)
        login_attempt = auth_on and self.throttle is not None and (
            (method == "POST" and path in LOGIN_PATHS) or (is_api and "authorization" in headers))

        if login_attempt:
            wait = self.throttle.retry_after(client)
            if wait > 0:
                return await send_error(send, 429, f"too many failed logins from this client: try again in "
                                                   f"{math.ceil(wait)} s", "too_many_failed_logins",
                                        {"Retry-After": math.ceil(wait)}, close=True)
        if is_api:
            refusal = self._api_refusal(scope, path, method, headers, auth_on)
            if refusal is not None:
                if refusal[0] == 401 and self.throttle is not None and "authorization" in headers:
                    self.throttle.failed(client)
                return await send_error(send, *refusal)
            if auth_on and "authorization" in headers and self.throttle is not None and path not in API_EXACT:
                self.throttle.succeeded(client)

        if method in BODY_METHODS and path not in UPLOAD_PATHS:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return await send_error(send, 413, f"request body of {length} bytes exceeds the limit of "
                                                   f"{self.max_body} bytes", "payload_too_large", close=True)
            try:
                body = await self._read_body(receive)
            except _BodyTooLarge:
                return await send_error(send, 413, f"request body exceeds the limit of {self.max_body} bytes",
                                        "payload_too_large", close=True)
            except _BodyTimeout:
                return await send_error(send, 408, f"request body not received: the client paused for more than "
                                                   f"{self.body_timeout_s:.0f} s", "request_timeout", close=True)
            if body is None:  # the client went away while sending
                return
            receive = _replay(body, receive)
        else:
            receive = self._paced(receive)

        if login_attempt and path in LOGIN_PATHS:
            send = self._watch_login(send, client)
        return await self.app(scope, receive, send)

    # ------------------------------------------------------------------ API rules
    def _api_refusal(self, scope, path, method, headers, auth_on):
        if auth_on and path not in API_EXACT and not credentials_ok(headers.get("authorization"), self.auth, self.token):
            challenge = 'Bearer realm="pathvlm"' if self.token else 'Basic realm="pathvlm"'
            return (401, "missing or wrong credential: send Authorization: Bearer <token> or HTTP basic auth",
                    "unauthorized", {"WWW-Authenticate": challenge})
        allowed = self._allowed_methods(scope)
        if allowed is None:
            return 404, f"no API route {path}; see /docs for the routes", "not_found"
        if method not in allowed:
            return (405, f"method {method} is not allowed on {path}; use {', '.join(sorted(allowed))}",
                    "method_not_allowed", {"Allow": ", ".join(sorted(allowed))})
        if method in BODY_METHODS:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return (415, f"content type must be application/json, got {ctype or 'none'!r}",
                        "unsupported_media_type")
        return None

    def _allowed_methods(self, scope) -> set[str] | None:
        """The methods of the API route matching this path (None: no route has it)."""
        from starlette.routing import Match, Mount

        if self.api is None:
            return {scope["method"]}
        methods: set[str] | None = None
        for route in self.api.router.routes:
            if isinstance(route, Mount) or not hasattr(route, "methods"):
                continue
            match, _ = route.matches(scope)
            if match in (Match.FULL, Match.PARTIAL):
                methods = (methods or set()) | set(route.methods or ())
        return methods

    # ------------------------------------------------------------------ bodies
    async def _next(self, receive):
        try:
            return await asyncio.wait_for(receive(), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise _BodyTimeout() from None

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await self._next(receive)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _BodyTooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _paced(self, receive):
        """``receive`` with the pause limit while a streamed body (an upload) is still arriving."""
        state = {"done": False}

        async def paced():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                state["done"] = True
                return {"type": "http.disconnect"}  # the app stops reading; uvicorn drops the connection
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        return paced

    # ------------------------------------------------------------------ logins
    def _watch_login(self, send, client):
        async def watching(message):
            if message["type"] == "http.response.start":
                if message["status"] == 200:
                    self.throttle.succeeded(client)
                elif message["status"] in (400, 401, 403):
                    self.throttle.failed(client)
            await send(message)

        return watching


def _replay(body: bytes, receive):
    """A ``receive`` that gives the app the whole buffered body, then passes on what follows (disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
