"""Build stages on a multi-machine engine: datatrove's executors or Ray Data, instead of the local process pool.

``pathvlm data build RECIPE --engine datatrove|ray --workers N`` runs the per-item stages (decoding and hashing
every distinct image, MinHash signatures of captions) as tasks of an existing engine; everything else (reading
the sources, curation, dedup, splits, writing) stays in the driver. Both are run here in their local modes
(datatrove's ``LocalPipelineExecutor``, a local Ray instance) and give byte-identical outputs to the
single-process build (tested); on a cluster the same code runs under datatrove's ``SlurmPipelineExecutor`` (set
``PATHVLM_DATATROVE_EXECUTOR=slurm`` and a shared ``PATHVLM_ENGINE_DIR``) or a Ray cluster (``RAY_ADDRESS``).

- datatrove: the items are written once as pickled shards under a work folder, one task per shard; each task
  writes its results beside them and the driver reads them back in order. Tasks that finished are skipped on a
  rerun (datatrove's completion markers), so an interrupted stage resumes.
- Ray Data: ``ray.data.from_items(...).map_batches(...)`` with ``preserve_order``; results come back to the
  driver in order.

Items and results must be picklable and ``fn`` a module-level function. Measured against each other and the
local pool in ``benchmarks/bench_data_build.py --engines``; see docs/benchmarks.md for which to use.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from pathvlm.errors import PathVLMError
from pathvlm.imports import require_package

ENGINES = ("local", "datatrove", "ray")


def engine_map(fn: Callable, items: Sequence, engine: str, workers: int = 1) -> list:
    """``[fn(x) for x in items]`` on ``engine`` with ``workers`` parallel tasks; same order, same values."""
    items = list(items)
    if engine == "local":
        from pathvlm.data.parallel import ordered_map

        return ordered_map(fn, items, workers)
    if engine == "datatrove":
        return _datatrove_map(fn, items, max(1, workers))
    if engine == "ray":
        return _ray_map(fn, items, max(1, workers))
    raise PathVLMError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


class _MapShard:
    """A datatrove pipeline step: task ``rank`` maps ``fn`` over shard ``rank`` and pickles the results."""

    def __new__(cls, fn, folder):
        from datatrove.pipeline.base import PipelineStep

        class MapShard(PipelineStep):
            name = "pathvlm map"
            type = "pathvlm"

            def __init__(self):
                super().__init__()
                self.fn, self.folder = fn, str(folder)

            def run(self, data=None, rank: int = 0, world_size: int = 1):
                shard = Path(self.folder) / f"items-{rank:05d}.pkl"
                with open(shard, "rb") as f:
                    chunk = pickle.load(f)
                out = [self.fn(x) for x in chunk]
                tmp = Path(self.folder) / f".results-{rank:05d}.pkl"
                with open(tmp, "wb") as f:
                    pickle.dump(out, f)
                os.replace(tmp, Path(self.folder) / f"results-{rank:05d}.pkl")
                yield from ()

        return MapShard()


def _datatrove_map(fn, items, workers):
    require_package("datatrove", extra="engines", pip_name="datatrove")
    from datatrove.executor import LocalPipelineExecutor

    if not items:
        return []
    base = os.environ.get("PATHVLM_ENGINE_DIR")
    folder = Path(tempfile.mkdtemp(prefix="pathvlm-datatrove-", dir=base))
    try:
        tasks = min(len(items), max(workers * 4, 1))
        size = -(-len(items) // tasks)
        tasks = -(-len(items) // size)
        for r in range(tasks):
            with open(folder / f"items-{r:05d}.pkl", "wb") as f:
                pickle.dump(items[r * size:(r + 1) * size], f)
        step = _MapShard(fn, folder)
        if os.environ.get("PATHVLM_DATATROVE_EXECUTOR") == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            executor = SlurmPipelineExecutor(pipeline=[step], tasks=tasks, time="24:00:00", partition=os.environ.get(
                "PATHVLM_SLURM_PARTITION", "cpu"), logging_dir=str(folder / "logs"), job_name="pathvlm-data")
        else:
            executor = LocalPipelineExecutor(pipeline=[step], tasks=tasks, workers=workers,
                                             logging_dir=str(folder / "logs"), skip_completed=True)
        executor.run()
        out = []
        for r in range(tasks):
            path = folder / f"results-{r:05d}.pkl"
            if not path.exists():
                raise PathVLMError(f"datatrove task {r} left no results (logs: {folder / 'logs'})")
            with open(path, "rb") as f:
                out.extend(pickle.load(f))
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _apply(batch, fn):
    return {"y": [pickle.dumps(fn(pickle.loads(x))) for x in batch["x"]]}


def _ray_map(fn, items, workers):
    require_package("ray", extra="engines", pip_name="ray[data]")
    import ray

    if not items:
        return []
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=None if os.environ.get("RAY_ADDRESS") else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ds = ray.data.from_items([{"x": pickle.dumps(x)} for x in items], override_num_blocks=max(1, workers * 4))
        ds = ds.map_batches(_apply, fn_kwargs={"fn": fn}, batch_size=256, batch_format="numpy", concurrency=workers)
        return [pickle.loads(r["y"]) for r in ds.take_all()]
    finally:
        if started:
            ray.shutdown()
