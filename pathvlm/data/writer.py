"""Writing datasets: HF parquet shards (images as bytes), optional webdataset tars, and checksums."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

ROWS_PER_SHARD = 5000
JPEG_MAGIC = b"\xff\xd8"


def _features(rows: list[dict]):
    from datasets import Features, Image, List, Value

    sample = rows[0]
    feats = {}
    for k, v in sample.items():
        if k == "image":
            feats[k] = Image()
        elif k == "images":
            feats[k] = List(Image())
        elif k in ("options",):
            feats[k] = List(Value("string"))
        elif k in ("messages", "prompt") and isinstance(v, list):
            feats[k] = List({"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})})
        else:
            feats[k] = Value("string")
    return Features(feats)


def _bytes(ref) -> bytes | None:
    """Image references (pathvlm.data.build.ImageRef) are read only now, one shard at a time."""
    return None if ref is None else ref if isinstance(ref, bytes) else ref.read()


def _image_dict(ref):
    return None if ref is None else {"bytes": _bytes(ref), "path": None}


def _write_shard(task) -> str:
    """One parquet shard: read its images (``ImageRef``) and write the file. Runs in a worker with ``--workers``."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    rows, features, path = task
    chunk = []
    for r in rows:
        r = dict(r)
        if "image" in r:
            r["image"] = _image_dict(r["image"])
        if "images" in r:
            r["images"] = [_image_dict(b) for b in r["images"]]
        chunk.append(r)
    Dataset.from_list(chunk, features=features).to_parquet(path)
    return path


def write_parquet(rows: list[dict], folder: Path, split: str, workers: int = 1) -> list[Path]:
    """``folder/{split}-0000i-of-0000n.parquet`` in the hub's layout; loadable with
    ``datasets.load_dataset("parquet", data_files=...)`` with images decoded. Shards are written by ``workers``
    processes; each shard's bytes depend only on its rows."""
    from pathvlm.data.parallel import ordered_map

    folder.mkdir(parents=True, exist_ok=True)
    if not rows:
        return []
    features = _features(rows)
    n = (len(rows) + ROWS_PER_SHARD - 1) // ROWS_PER_SHARD
    tasks = [(rows[i * ROWS_PER_SHARD:(i + 1) * ROWS_PER_SHARD], features, str(folder / f"{split}-{i:05d}-of-{n:05d}.parquet"))
             for i in range(n)]
    return [Path(p) for p in ordered_map(_write_shard, tasks, min(workers, n), chunksize=1)]


def write_webdataset(rows: list[dict], folder: Path, split: str) -> list[Path]:
    """webdataset tar shards: ``{key}.png|jpg`` + ``{key}.json`` per sample (first image only)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(rows), ROWS_PER_SHARD):
        path = folder / f"{split}-{i // ROWS_PER_SHARD:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for r in rows[i:i + ROWS_PER_SHARD]:
                key = r["id"].replace(".", "_")
                img = _bytes(r.get("image") if "image" in r else (r.get("images") or [None])[0])
                meta = {k: v for k, v in r.items() if k not in ("image", "images")}
                files = [(f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
                if img is not None:
                    ext = "jpg" if img[:2] == JPEG_MAGIC else "png"
                    files.insert(0, (f"{key}.{ext}", img))
                for name, data in files:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "checksums.json"}
