"""Admission control: a bounded number of requests run, a bounded number wait, the rest are told "busy" at once.

A gate has ``concurrency`` slots (a semaphore) and room for ``max_waiting`` requests in line (a
counter under a lock). ``admit()`` never blocks: when running + waiting is at the bound it raises
:class:`Busy` immediately, so a full server answers 503 in microseconds instead of piling up
threads. An admitted request then waits for a slot for at most ``queue_timeout_s``.

Work runs on the gate's own worker threads and keeps its slot until it really finishes, even when
the caller gave up after ``request_timeout_s``: the slot count always matches the compute in use.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import Callable, Iterator, TypeVar

from pathvlm.serving.errors import Busy, RequestTimeout

T = TypeVar("T")


class AdmissionGate:
    def __init__(self, name: str, concurrency: int, max_waiting: int, queue_timeout_s: float = 60.0,
                 request_timeout_s: float = 120.0):
        if concurrency < 1 or max_waiting < 0:
            raise ValueError("concurrency must be >= 1 and max_waiting >= 0")
        self.name, self.concurrency, self.max_waiting = name, concurrency, max_waiting
        self.queue_timeout_s, self.request_timeout_s = queue_timeout_s, request_timeout_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._waiting = self._running = 0
        self.counts = {"admitted": 0, "rejected": 0, "completed": 0, "failed": 0, "timed_out": 0}
        # one thread per slot, plus room for work whose caller timed out (still holding its slot)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"gate-{name}")

    # ------------------------------------------------------------------ admission
    def admit(self) -> "Ticket":
        with self._lock:
            if self._waiting + self._running >= self.concurrency + self.max_waiting:
                self.counts["rejected"] += 1
                raise Busy(f"server busy: {self._running} {self.name} request(s) running and {self._waiting} waiting "
                           f"(limit {self.concurrency} + {self.max_waiting}); try again shortly")
            self._waiting += 1
            self.counts["admitted"] += 1
        return Ticket(self)

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
    """One admitted request: waits for a slot once, then runs once."""

    def __init__(self, gate: AdmissionGate):
        self.gate = gate
        self._state = "waiting"  # -> running -> done

    def _wait_for_slot(self) -> None:
        g = self.gate
        ok = g._slots.acquire(timeout=g.queue_timeout_s)
        with g._lock:
            g._waiting -= 1
            if ok:
                g._running += 1
        if not ok:
            self._state = "done"
            g._count("rejected")
            raise Busy(f"server busy: waited {g.queue_timeout_s:.0f} s for a free {g.name} slot; try again shortly")
        self._state = "running"

    def _release(self, outcome: str) -> None:
        g = self.gate
        with g._lock:
            g._running -= 1
            g.counts[outcome] += 1
        g._slots.release()
        self._state = "done"

    def cancel(self) -> None:
        """Give up before running (e.g. the client went away while waiting)."""
        if self._state == "waiting":
            with self.gate._lock:
                self.gate._waiting -= 1
            self._state = "done"

    def run(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        self._wait_for_slot()
        timeout_s = self.gate.request_timeout_s if timeout_s is None else timeout_s

        def work():
            try:
                out = fn()
            except BaseException:
                self._release("failed")
                raise
            self._release("completed")
            return out

        future = self.gate._pool.submit(work)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            self.gate._count("timed_out")
            raise RequestTimeout(f"request timed out after {timeout_s:.0f} s (it keeps its slot until it finishes)") from None

    def stream(self, make_iter: Callable[[], Iterator[T]], timeout_s: float | None = None) -> Iterator[T]:
        timeout_s = self.gate.request_timeout_s if timeout_s is None else timeout_s
        return _Stream(self, make_iter, timeout_s)


_END = object()


class _Stream:
    """Iterator over work that runs on a gate worker; the consumer side enforces the deadline.

    Closing it early (client disconnect, deadline) sets a stop flag the worker checks between items,
    and the worker closes the producing iterator, which stops generation.
    """

    def __init__(self, ticket: Ticket, make_iter, timeout_s: float):
        self.ticket, self.make_iter, self.timeout_s = ticket, make_iter, timeout_s
        self._q: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._started = False
        self._deadline = None

    def _start(self) -> None:
        self._started = True
        self.ticket._wait_for_slot()
        self._deadline = time.monotonic() + self.timeout_s
        self.ticket.gate._pool.submit(self._produce)

    def _produce(self) -> None:
        outcome = "completed"
        it = None
        try:
            it = self.make_iter()
            for item in it:
                if self._stop.is_set():
                    break
                self._q.put(("item", item))
        except BaseException as e:  # handed to the consumer, who raises it
            outcome = "failed"
            self._q.put(("error", e))
        finally:
            if it is not None and hasattr(it, "close"):
                try:
                    it.close()
                except Exception:
                    pass
            self.ticket._release(outcome)
            self._q.put(("end", None))

    def __iter__(self):
        return self

    def __next__(self):
        if not self._started:
            self._start()
        remaining = self._deadline - time.monotonic()
        try:
            kind, value = self._q.get(timeout=max(remaining, 0.0))
        except queue.Empty:
            self._stop.set()
            self.ticket.gate._count("timed_out")
            raise RequestTimeout(f"request timed out after {self.timeout_s:.0f} s") from None
        if kind == "item":
            return value
        if kind == "error":
            self._stop.set()
            raise value
        raise StopIteration

    def close(self) -> None:
        if not self._started:
            self.ticket.cancel()
        self._stop.set()
