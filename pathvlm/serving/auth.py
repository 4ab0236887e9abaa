"""Credentials for ``pathvlm serve`` and the throttle on failed logins.

:func:`credentials_ok` checks an ``Authorization`` header (Bearer token, or HTTP basic auth with
``--auth user:pass`` or any user name and the token as password) in constant time.

:class:`LoginThrottle` counts failed logins per client (the web app's login form and the API's
401s together). Like Grafana's brute-force protection, a client with ``max_failures`` failures in
the last ``window_s`` seconds is refused (HTTP 429 with ``Retry-After``) until the oldest of them
leaves the window, even with the right password, so guessing stays at ``max_failures`` tries per
window. A success clears the client's count.
"""
from __future__ import annotations

import base64
import hmac
import threading
import time
from collections import OrderedDict, deque


def credentials_ok(header: str | None, auth: str | None, token: str | None) -> bool:
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


def password_ok(user: str, password: str, auth: str | None, token: str | None) -> bool:
    """The web login: ``--auth`` user and password, or any user name with the token as password."""
    ok = False
    if auth:
        want_user, want_password = auth.split(":", 1)
        ok = hmac.compare_digest(f"{user}:{password}".encode(), f"{want_user}:{want_password}".encode())
    if token:
        ok = hmac.compare_digest(str(password).encode(), token.encode()) or ok
    return ok


class LoginThrottle:
    def __init__(self, max_failures: int = 5, window_s: float = 300.0, max_clients: int = 10_000, clock=time.monotonic):
        self.max_failures, self.window_s, self.max_clients, self.clock = max_failures, window_s, max_clients, clock
        self._failures: OrderedDict[str, deque] = OrderedDict()
        self._lock = threading.Lock()
        self.refused = 0
        self.failed_total = 0

    def _recent(self, key: str, now: float) -> deque:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            self._failures.pop(key, None)
        return q

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        now = self.clock()
        with self._lock:
            q = self._recent(key, now)
            if len(q) < self.max_failures:
                return 0.0
            self.refused += 1
            return max(0.0, q[0] + self.window_s - now)

    def failed(self, key: str) -> None:
        now = self.clock()
        with self._lock:
            self.failed_total += 1
            q = self._failures.setdefault(key, deque())
            self._failures.move_to_end(key)
            q.append(now)
            while len(q) > self.max_failures:
                q.popleft()
            while len(self._failures) > self.max_clients:  # bounded memory under a spray of addresses
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def stats(self) -> dict:
        now = self.clock()
        with self._lock:
            blocked = sum(1 for k in list(self._failures) if len(self._recent(k, now)) >= self.max_failures)
            return {"failed_logins": self.failed_total, "refused_logins": self.refused, "blocked_clients": blocked,
                    "max_failures": self.max_failures, "window_s": self.window_s}
