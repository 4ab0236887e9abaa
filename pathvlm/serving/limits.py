"""Admission control: a bounded number of requests run, a bounded number wait, the rest are told "busy" at once.

A gate has ``concurrency`` slots (a semaphore) and room for ``max_waiting`` requests in line (a
counter under a lock). ``admit()`` never blocks: when running + waiting is at the bound it raises
:class:`Busy` immediately, so a full server answers 503 in microseconds instead of piling up
threads. An admitted request then waits for a slot for at most ``queue_timeout_s``.

Every admitted request carries a :class:`~pathvlm.cancel.CancelToken`. When its caller gives up
(the ``request_timeout_s`` deadline passes, or the client disconnects) the token is set: a request
still waiting for a slot leaves the line at once, and running work stops at its next checkpoint
(between batches of text embeddings, between generated tokens; see :mod:`pathvlm.cancel`). A slot
is given back only when the work has really stopped, so the slot count always matches the compute
in use; cancellation is what makes that happen within a step of the deadline instead of whenever
the work would have finished. Work with no checkpoint (a single blocking call to a remote backend)
keeps its slot until that call returns, which the backend's own timeout bounds.

Each request ends with exactly one outcome, counted for ``/health``: completed, failed, timed_out
(deadline passed), cancelled (client went away) or rejected (no room, or no slot in time).

:class:`PixelBudget` caps the pixels of all images admitted and not yet finished (waiting or
running), counted from their headers before anything is decoded.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import Callable, Iterator, TypeVar

from pathvlm.cancel import CancelToken, Cancelled, cancel_scope, current_token
from pathvlm.serving.errors import Busy, RequestTimeout

T = TypeVar("T")
OUTCOMES = ("completed", "failed", "timed_out", "cancelled")
_POLL_S = 0.05  # how often a request waiting for a slot looks at its cancel token


class FifoSlots:
    """``n`` slots handed to waiters in arrival order; a waiter can give up (timeout, cancellation)."""

    def __init__(self, n: int):
        self._free = n
        self._waiters: deque[threading.Event] = deque()
        self._lock = threading.Lock()

    def acquire(self, deadline: float, token: CancelToken) -> bool:
        """True once a slot is ours; False when ``deadline`` (monotonic) passes or ``token`` is cancelled."""
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return True
            granted = threading.Event()
            self._waiters.append(granted)
        while True:
            left = deadline - time.monotonic()
            if granted.wait(max(0.0, min(_POLL_S, left))):
                return True
            if token.cancelled or left <= 0:
                with self._lock:
                    if granted.is_set():  # handed over just now: the caller gives it back
                        return True
                    self._waiters.remove(granted)
                return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()  # straight to the longest waiter
            else:
                self._free += 1


class AdmissionGate:
    def __init__(self, name: str, concurrency: int, max_waiting: int, queue_timeout_s: float = 60.0,
                 request_timeout_s: float = 120.0):
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.name, self.concurrency, self.max_waiting = name, concurrency, max_waiting
        self.queue_timeout_s, self.request_timeout_s = queue_timeout_s, request_timeout_s
        self._slots = FifoSlots(concurrency)
        self._lock = threading.Lock()
        self._waiting = self._running = 0
        self.counts = {"admitted": 0, "rejected": 0, **{k: 0 for k in OUTCOMES}}
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"gate-{name}")

    # ------------------------------------------------------------------ admission
    def admit(self, token: CancelToken | None = None) -> "Ticket":
        """A place in line (Busy at once when full). ``token``: the caller's cancel token (default: the
        current :func:`~pathvlm.cancel.cancel_scope`'s, else a new one)."""
        with self._lock:
            if self._waiting + self._running >= self.concurrency + self.max_waiting:
                self.counts["rejected"] += 1
                raise Busy(f"server busy: {self._running} {self.name} request(s) running and {self._waiting} waiting "
                           f"(limit {self.concurrency} + {self.max_waiting}); try again shortly")
            self._waiting += 1
            self.counts["admitted"] += 1
        return Ticket(self, token or current_token() or CancelToken())

    def stats(self) -> dict:
        with self._lock:
            return {"running": self._running, "waiting": self._waiting, "concurrency": self.concurrency,
                    "max_waiting": self.max_waiting, **self.counts}

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # ------------------------------------------------------------------ running work
    def run(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """Admit, wait for a slot, run ``fn`` on a worker and return its result (Busy / RequestTimeout)."""
        return self.admit().run(fn, timeout_s)

    def stream(self, make_iter: Callable[[], Iterator[T]], timeout_s: float | None = None) -> Iterator[T]:
        """Admit now (Busy at once), then yield ``make_iter()``'s items; the whole stream gets one deadline."""
        return self.admit().stream(make_iter, timeout_s)


class Ticket:
    """One admitted request: waits for a slot once, then runs once, then ends with one outcome."""

    def __init__(self, gate: AdmissionGate, token: CancelToken):
        self.gate, self.token = gate, token
        self._state = "waiting"  # -> running -> done
        self._outcome: str | None = None
        self._on_done: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ bookkeeping
    def hold(self, release: Callable[[], None]) -> None:
        """Run ``release`` when this request ends (a pixel reservation, for example)."""
        with self._lock:
            if self._state != "done":
                self._on_done.append(release)
                return
        release()

    def _finish(self, outcome: str | None) -> None:
        """Record the outcome (the first one wins) and release what the request held."""
        with self._lock:
            counted = outcome is not None and self._outcome is None
            if counted:
                self._outcome = outcome
        if counted:
            self.gate._count(outcome)

    def _done(self) -> None:
        with self._lock:
            self._state = "done"
            on_done, self._on_done = self._on_done, []
        for release in on_done:
            release()

    @property
    def outcome(self) -> str | None:
        return self._outcome

    def _outcome_of(self, error: BaseException | None) -> str:
        if error is None:
            return "completed"
        if isinstance(error, Cancelled) or self.token.cancelled:
            return "timed_out" if self.token.reason == "timeout" else "cancelled"
        return "failed"

    # ------------------------------------------------------------------ waiting
    def _wait_for_slot(self) -> None:
        g = self.gate
        ok = g._slots.acquire(time.monotonic() + g.queue_timeout_s, self.token)
        with g._lock:
            g._waiting -= 1
            if ok:
                g._running += 1
        if ok:
            self._state = "running"
            return
        self._done()
        if self.token.cancelled:
            self._finish(self._outcome_of(Cancelled(self.token.reason or "cancelled")))
            raise Cancelled(self.token.reason or "cancelled")
        g._count("rejected")
        raise Busy(f"server busy: waited {g.queue_timeout_s:.0f} s for a free {g.name} slot; try again shortly")

    def _release_slot(self, outcome: str) -> None:
        g = self.gate
        with g._lock:
            g._running -= 1
        g._slots.release()
        self._finish(outcome)
        self._done()

    def withdraw(self) -> None:
        """Give the place in line back without an outcome (the request turned out to be malformed)."""
        if self._state == "waiting":
            with self.gate._lock:
                self.gate._waiting -= 1
            self._done()

    def abandon(self, reason: str = "disconnected") -> None:
        """The caller gave up: leave the line if still waiting, else ask the running work to stop."""
        self.token.cancel(reason)
        if self._state == "waiting":
            with self.gate._lock:
                self.gate._waiting -= 1
            self._finish(self._outcome_of(Cancelled(reason)))
            self._done()

    # ------------------------------------------------------------------ running
    def run(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        self._wait_for_slot()
        timeout_s = self.gate.request_timeout_s if timeout_s is None else timeout_s

        def work():
            error = None
            try:
                with cancel_scope(self.token):
                    self.token.check()
                    return fn()
            except BaseException as e:
                error = e
                raise
            finally:
                self._release_slot(self._outcome_of(error))

        future = self.gate._pool.submit(work)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            self.token.cancel("timeout")
            self._finish("timed_out")
            raise RequestTimeout(f"request timed out after {timeout_s:.0f} s (the work was asked to stop)") from None

    def stream(self, make_iter: Callable[[], Iterator[T]], timeout_s: float | None = None) -> "_Stream":
        timeout_s = self.gate.request_timeout_s if timeout_s is None else timeout_s
        return _Stream(self, make_iter, timeout_s)


_END = object()


class _Stream:
    """Iterator over work that runs on a gate worker; the consumer side enforces the deadline.

    Closing it early (client disconnect) or passing the deadline sets the ticket's cancel token:
    the worker stops at its next item (or checkpoint) and closes the producing iterator, which stops
    generation; then the slot is given back.
    """

    def __init__(self, ticket: Ticket, make_iter, timeout_s: float):
        self.ticket, self.make_iter, self.timeout_s = ticket, make_iter, timeout_s
        self._q: queue.Queue = queue.Queue()
        self._started = self._ended = False
        self._deadline = None

    def _start(self) -> None:
        self._started = True
        self.ticket._wait_for_slot()
        self._deadline = time.monotonic() + self.timeout_s
        self.ticket.gate._pool.submit(self._produce)

    def _produce(self) -> None:
        token = self.ticket.token
        error = None
        it = None
        try:
            with cancel_scope(token):
                token.check()  # abandoned while it waited for its slot
                it = self.make_iter()
                for item in it:
                    if token.cancelled:
                        break
                    self._q.put(("item", item))
                token.check()
        except BaseException as e:  # handed to the consumer, who raises it
            error = e
            self._q.put(("error", e))
        finally:
            if it is not None and hasattr(it, "close"):
                try:
                    with cancel_scope(token):
                        it.close()
                except Exception:
                    pass
            self.ticket._release_slot(self.ticket._outcome_of(error))
            self._q.put(("end", None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._ended:
            raise StopIteration
        if not self._started:
            self._start()
        while True:
            remaining = self._deadline - time.monotonic()
            try:
                kind, value = self._q.get(timeout=max(min(remaining, _POLL_S * 4), 0.0))
                break
            except queue.Empty:
                if self.ticket.token.cancelled:
                    self._ended = True
                    raise Cancelled(self.ticket.token.reason or "cancelled") from None
                if remaining <= 0:
                    self._ended = True
                    self.ticket.token.cancel("timeout")
                    self.ticket._finish("timed_out")
                    raise RequestTimeout(f"request timed out after {self.timeout_s:.0f} s") from None
        if kind == "item":
            return value
        self._ended = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop consuming: a stream that has not ended is abandoned (its work is cancelled)."""
        if self._ended:
            return
        self._ended = True
        if not self._started:
            self.ticket.abandon("closed")
        else:
            self.ticket.token.cancel("closed")


class PixelBudget:
    """Pixels of the images of all admitted, unfinished requests, counted from their headers."""

    def __init__(self, max_pixels: int):
        if max_pixels < 1:
            raise ValueError("max_pixels must be >= 1")
        self.max_pixels = max_pixels
        self._used = 0
        self._lock = threading.Lock()
        self.refused = 0

    def reserve(self, pixels: int) -> Callable[[], None]:
        """Take ``pixels`` from the budget (Busy when they do not fit); returns the release function."""
        pixels = int(pixels)
        if pixels <= 0:
            return lambda: None
        with self._lock:
            if self._used + pixels > self.max_pixels:
                self.refused += 1
                raise Busy(f"server busy: images of {self._used / 1e6:.1f} Mpixels are already waiting or running "
                           f"(limit {self.max_pixels / 1e6:.1f} Mpixels); this request's {pixels / 1e6:.1f} Mpixels "
                           "do not fit. Try again shortly, or send smaller images")
            self._used += pixels
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._used -= pixels

        return release

    def stats(self) -> dict:
        with self._lock:
            return {"pixels_in_use": self._used, "max_pixels": self.max_pixels, "refused": self.refused}
