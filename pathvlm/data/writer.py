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
    from pathvlm.data.parallel import Pool

    folder.mkdir(parents=True, exist_ok=True)
    with Pool(workers) as pool:
        w = SplitWriter(folder, split, pool)
        for r in rows:
            w.add(r)
        return w.close()


def _write_tar(task) -> str:
    """One webdataset tar: ``{key}.png|jpg`` + ``{key}.json`` per sample (first image only)."""
    rows, path = task
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for r in rows:
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
    return path


class SplitWriter:
    """One split of one built set, written as its rows arrive: parquet shards of ``ROWS_PER_SHARD`` rows
    (``folder/{split}-0000i-of-0000n.parquet``, the hub's layout) on the build's pool (``pathvlm.data.parallel.Pool``)
    with a few shards in flight, and the same rows as webdataset tars (``folder/webdataset/{split}-00000i.tar``) when
    asked. A shard's bytes depend only on its rows, and its final name (with the total) is given at ``close``."""

    def __init__(self, folder: Path, split: str, pool, webdataset: bool = False):
        self.folder, self.split, self.pool, self.webdataset = Path(folder), split, pool, webdataset
        self.buffer: list[dict] = []
        self.features = None
        self.shards: list[Path] = []
        self.count = 0
        self._in_flight: list = []

    def add(self, row: dict) -> None:
        if self.features is None:
            self.features = _features([row])
        self.buffer.append(row)
        self.count += 1
        if len(self.buffer) == ROWS_PER_SHARD:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        i = len(self.shards)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f".{self.split}-{i:05d}.parquet.part"
        self.shards.append(path)
        self._in_flight.append(self.pool.submit(_write_shard, (self.buffer, self.features, str(path))))
        if self.webdataset:
            (self.folder / "webdataset").mkdir(exist_ok=True)
            _write_tar((self.buffer, self.folder / "webdataset" / f"{self.split}-{i:06d}.tar"))
        self.buffer = []
        while len(self._in_flight) > 2 * self.pool.workers:
            self._in_flight.pop(0).result()

    def close(self) -> list[Path]:
        self._flush()
        while self._in_flight:
            self._in_flight.pop(0).result()
        n = len(self.shards)
        final = [self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        for part, path in zip(self.shards, final):
            part.rename(path)
        return final


def checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "checksums.json"}
