"""Running a build's per-item work on several processes of one machine, with results in input order.

``ordered_map(fn, items, workers)`` is ``list(map(fn, items))`` spread over ``workers`` processes
(``concurrent.futures.ProcessPoolExecutor``, items sent in chunks): the output is the same list in the same order
whatever the worker count, so a build with ``--workers N`` writes the same bytes as one without. ``fn`` must be a
module-level function and items and results picklable; with ``workers <= 1`` nothing is spawned. Processes are
started with ``fork`` where the platform has it (the parent's imports are inherited), else ``spawn``.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

def resolve_workers(workers: int | None) -> int:
    """``None``/0 -> 1; a negative number -> all CPUs; else the number given."""
    if not workers:
        return 1
    if workers < 0:
        return os.cpu_count() or 1
    return int(workers)


def _chunksize(n: int, workers: int) -> int:
    """Items per task: about 8 tasks per worker, at most 256 items each."""
    return max(1, min(256, n // (workers * 8) or 1))


def _context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def ordered_map(fn: Callable, items: Sequence | Iterable, workers: int = 1, chunksize: int | None = None,
                progress: bool = False, desc: str = "") -> list:
    """``[fn(x) for x in items]``, computed on ``workers`` processes; same order, same values."""
    items = list(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="item")
    if workers <= 1 or len(items) < 2:
        out = []
        for x in items:
            out.append(fn(x))
            if bar is not None:
                bar.update(1)
    else:
        chunksize = chunksize or _chunksize(len(items), workers)
        out = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
            for y in pool.map(fn, items, chunksize=chunksize):
                out.append(y)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return out


class _Done:
    """A finished call, shaped like a future (what ``Pool.submit`` returns without workers)."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value


class Pool:
    """One process pool kept for a whole build (none with ``workers <= 1``): ``map`` is ``ordered_map`` on it,
    ``submit`` runs one call on it (inline without workers). A context manager; the workers start on first use."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))
        self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=_context())
        return self._pool

    def map(self, fn: Callable, items: Sequence, workers: int | None = None, chunksize: int | None = None) -> list:
        """``[fn(x) for x in items]`` in order; on the pool unless ``workers`` (default: the pool's) is 1."""
        workers = self.workers if workers is None else min(workers, self.workers)
        if workers <= 1 or len(items) < 2:
            return [fn(x) for x in items]
        chunksize = chunksize or _chunksize(len(items), workers)
        return list(self._executor().map(fn, items, chunksize=chunksize))

    def submit(self, fn: Callable, arg):
        if self.workers <= 1:
            return _Done(fn(arg))
        return self._executor().submit(fn, arg)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
