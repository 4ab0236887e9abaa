"""Request errors that carry the HTTP status the API answers with (the UI shows the message)."""
from __future__ import annotations

from pathvlm.errors import PathVLMError


class RequestError(PathVLMError):
    """A bad request: the message says what is wrong. ``status`` is the HTTP status for the API."""

    status = 400
    kind = "invalid_request_error"

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind


class PayloadTooLarge(RequestError):
    status = 413
    kind = "payload_too_large"


class Busy(RequestError):
    """The queue is full (or a request waited too long for a slot): try again later."""

    status = 503
    kind = "server_busy"


class RequestTimeout(RequestError):
    status = 504
    kind = "timeout"


class NotAvailable(RequestError):
    """A feature this server was started without (no reasoner, no gallery)."""

    status = 501
    kind = "not_available"
