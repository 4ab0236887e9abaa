"""A client that goes away cancels its request, whether it is waiting for a slot or running.

vLLM's ``with_cancellation`` pattern: while the handler works, a task listens for the client's
``http.disconnect``; when it comes, the request's :class:`~pathvlm.cancel.CancelToken` is set. The
work runs inside that token's :func:`~pathvlm.cancel.cancel_scope`, so the admission gate ticket it
takes carries the token: a waiting request leaves the line, running work stops at its next
checkpoint (see :mod:`pathvlm.serving.limits`), and ``/health`` counts it as cancelled.
Streamed answers are abandoned through :func:`cancel_when_abandoned` when Starlette stops
streaming because the client disconnected.
"""
from __future__ import annotations

import asyncio
from typing import Callable, Iterator, TypeVar

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from pathvlm.cancel import CancelToken, cancel_scope

T = TypeVar("T")


async def _cancel_on_disconnect(request, token: CancelToken) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            token.cancel("disconnected")
            return


async def run_cancellable(request, fn: Callable[[], T]) -> T:
    """Run blocking ``fn`` on a worker thread, cancelled (cooperatively) if the client disconnects."""
    token = CancelToken()

    def work():
        with cancel_scope(token):
            return fn()

    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, token))
    try:
        return await run_in_threadpool(work)
    finally:
        watcher.cancel()


async def cancel_when_abandoned(events: Iterator[str], stream):
    """Serve a sync event iterator; if the response stops before it ends (the client went away),
    close ``stream``, which cancels the generation behind it."""
    finished = False
    try:
        async for chunk in iterate_in_threadpool(events):
            yield chunk
        finished = True
    finally:
        if not finished:
            stream.close()
