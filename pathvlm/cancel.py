"""Cooperative cancellation: long loops stop between steps when the work they serve is abandoned.

A :class:`CancelToken` is set by whoever gives up on the work (a server's deadline, a client that
disconnected). The work runs inside ``cancel_scope(token)`` and calls :func:`check_cancelled`
between steps it can stop after (a batch of text embeddings, a generated token); when the token
is set that call raises :class:`Cancelled`. Outside any scope the check costs one attribute
lookup and never raises, so library code can call it unconditionally.
"""
from __future__ import annotations

import contextlib
import threading

from pathvlm.errors import PathVLMError

_local = threading.local()


class Cancelled(PathVLMError):
    """The work was abandoned (``reason``: "timeout", "disconnected", ...)."""

    def __init__(self, reason: str = "cancelled"):
        super().__init__(f"work cancelled ({reason})")
        self.reason = reason


class CancelToken:
    """Thread-safe: set once from any thread, checked from the worker."""

    def __init__(self):
        self._event = threading.Event()
        self.reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> bool:
        """Ask the work to stop; returns False if it was already cancelled (the first reason stays)."""
        if self._event.is_set():
            return False
        self.reason = reason
        self._event.set()
        return True

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or ``timeout`` seconds pass; True if cancelled."""
        return self._event.wait(timeout)

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")


def current_token() -> CancelToken | None:
    """The token of the innermost :func:`cancel_scope` on this thread, or None."""
    return getattr(_local, "token", None)


@contextlib.contextmanager
def cancel_scope(token: CancelToken | None):
    """Make ``token`` the current one on this thread for the duration of the block."""
    previous = getattr(_local, "token", None)
    _local.token = token
    try:
        yield token
    finally:
        _local.token = previous


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the current scope's token is set (a no-op outside any scope)."""
    token = getattr(_local, "token", None)
    if token is not None and token.cancelled:
        raise Cancelled(token.reason or "cancelled")
