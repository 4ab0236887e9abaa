"""A gallery index on disk: embeddings, item paths and metadata, a faiss index, and the model's fingerprint.

Layout of an index folder::

    index.json        format, model (source, name, fingerprint), dim, count, ANN settings, errors
    items.jsonl       one line per vector: id, path, and any metadata found beside the images
    embeddings.npy    float32 [N, D], L2-normalised
    faiss.index       exact (flat) or IVF index over the embeddings
    parts/            during a build only: finished batches, so an interrupted build resumes

Searching with a model whose fingerprint differs from the one that built the index is refused:
its embeddings live in another space and the ranking would be meaningless.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from pathvlm.clip.folder import model_fingerprint
from pathvlm.embed import embed_images, embed_texts, iter_image_embeddings
from pathvlm.errors import IndexError_, PathVLMError
from pathvlm.images import list_images
from pathvlm.retrieval.ann import DEFAULT_ANN_THRESHOLD, build_faiss

FORMAT = "pathvlm-index"
VERSION = 1


def read_folder_metadata(root: Path) -> dict[str, dict]:
    """Per-image metadata in HF imagefolder style: ``metadata.jsonl`` or ``metadata.csv`` with ``file_name``."""
    rows: list[dict] = []
    if (root / "metadata.jsonl").exists():
        for n, line in enumerate((root / "metadata.jsonl").read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise PathVLMError(f"{root / 'metadata.jsonl'} line {n}: not valid JSON ({e})") from None
    elif (root / "metadata.csv").exists():
        with open(root / "metadata.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    return {str(r["file_name"]): {k: v for k, v in r.items() if k != "file_name"} for r in rows if "file_name" in r}


class GalleryIndex:
    def __init__(self, folder: Path, info: dict, items: list[dict], embeddings: np.ndarray, faiss_index):
        self.folder, self.info, self.items, self.embeddings, self.faiss_index = folder, info, items, embeddings, faiss_index

    # ---------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        out: str | os.PathLike,
        model,
        preprocess,
        source: str | None = None,
        batch_size: int | None = None,
        part_size: int = 2048,
        num_workers: int | None = None,
        ann_threshold: int = DEFAULT_ANN_THRESHOLD,
        progress: bool = True,
        device="cpu",
        precision: str = "fp32",
        backend: str = "torch",
        encode_in_workers: bool = False,
    ) -> "GalleryIndex":
        """Embed images (a folder or a list of files) into an index at ``out``; resumes a partial build."""
        out = Path(out)
        root = Path(images) if isinstance(images, (str, os.PathLike)) else None
        paths = list_images(root) if root is not None else [Path(p) for p in images]
        if not paths:
            raise PathVLMError("no images to index")
        meta = read_folder_metadata(root) if root is not None and root.is_dir() else {}
        fingerprint = model_fingerprint(model)
        parts = out / "parts"
        state_file = parts / "build.json"
        rel = [_relative(p, root) for p in paths]
        if not isinstance(part_size, int) or part_size < 1:
            raise PathVLMError(f"part_size must be a positive number of images, got {part_size!r}")
        if state_file.exists():
            state = _read_build_state(state_file, out)
            if (state.get("fingerprint"), state.get("items"), state.get("part_size"), state.get("precision", "fp32"),
                    state.get("backend", "torch")) != (fingerprint, rel, part_size, precision, backend):
                raise IndexError_(
                    f"{out}: holds an unfinished build with another model or other images; "
                    "delete the folder or choose another --out"
                )
        else:
            parts.mkdir(parents=True, exist_ok=True)
            _write_atomic(state_file, json.dumps({"fingerprint": fingerprint, "items": rel, "part_size": part_size,
                                                 "precision": precision, "backend": backend}))
        done = sorted(parts.glob("part-*.npz"))
        start = len(done) * part_size
        bar_total = len(paths)
        if progress and start:
            print(f"resuming: {start} of {bar_total} images already embedded")
        for part_no, lo in enumerate(range(start, len(paths), part_size), start=len(done)):
            chunk = paths[lo:lo + part_size]
            feats, ok, errors = [], [], []
            for batch in iter_image_embeddings(model, preprocess, chunk, batch_size=batch_size, num_workers=num_workers,
                                               device=device, progress=progress, precision=precision, backend=backend,
                                               encode_in_workers=encode_in_workers,
                                               desc=f"indexing {lo + 1}-{lo + len(chunk)} of {bar_total}"):
                feats.append(batch.features.numpy())
                ok += [lo + i for i in batch.indices]
                errors += [(lo + i, e) for i, e in batch.errors]
            vec = np.concatenate([f for f in feats if f.size]) if any(f.size for f in feats) else np.zeros((0, 0), np.float32)
            _save_part(parts / f"part-{part_no:05d}.npz", vec, ok, errors)
        root_dir = str(root.resolve()) if root is not None and root.is_dir() else None
        return cls._finalize(out, root_dir, rel, meta, fingerprint, model, source, ann_threshold, precision, backend)

    @classmethod
    def _finalize(cls, out, root_dir, rel, meta, fingerprint, model, source, ann_threshold, precision, backend="torch"):
        vecs, ids, errors = [], [], []
        for part in sorted((out / "parts").glob("part-*.npz")):
            with np.load(part, allow_pickle=False) as z:
                if z["vectors"].size:
                    vecs.append(z["vectors"])
                ids += z["ids"].tolist()
                errors += [(int(i), str(m)) for i, m in zip(z["error_ids"], z["error_messages"])]
        if not ids:
            raise PathVLMError(f"none of the {len(rel)} images could be read: first error: {errors[0][1] if errors else '?'}")
        emb = np.concatenate(vecs).astype(np.float32)
        items = [{"id": n, "path": rel[i], **meta.get(rel[i], {})} for n, i in enumerate(ids)]
        index, ann = build_faiss(emb, ann_threshold=ann_threshold)
        info = {
            "format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {"source": source or getattr(model, "pathvlm_source", None),
                      "name": getattr(model, "pathvlm_name", None), "fingerprint": fingerprint},
            "root": root_dir,
            "dim": int(emb.shape[1]), "count": len(items), "ann": asdict(ann), "image_precision": precision, "image_backend": backend,
            "skipped": [{"path": rel[i], "error": m} for i, m in errors],
        }
        faiss = __import__("faiss")
        faiss.write_index(index, str(out / "faiss.index.tmp"))
        np.save(out / "embeddings.tmp.npy", emb)
        _write_atomic(out / "items.jsonl", "".join(json.dumps(it) + "\n" for it in items))
        os.replace(out / "faiss.index.tmp", out / "faiss.index")
        os.replace(out / "embeddings.tmp.npy", out / "embeddings.npy")
        _write_atomic(out / "index.json", json.dumps(info, indent=2))  # written last: marks the index complete
        shutil.rmtree(out / "parts", ignore_errors=True)
        return cls(out, info, items, emb, index)

    # ---------------------------------------------------------------- load
    @classmethod
    def load(cls, folder: str | os.PathLike) -> "GalleryIndex":
        folder = Path(folder)
        info_file = folder / "index.json"
        if not info_file.exists():
            hint = " (an unfinished build: run `pathvlm index build` again to resume)" if (folder / "parts").exists() else ""
            raise IndexError_(f"{folder}: not a pathvlm index (no index.json){hint}")
        try:
            info = json.loads(info_file.read_text())
            if info.get("format") != FORMAT:
                raise ValueError(f"format is {info.get('format')!r}")
            items = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]
            emb = np.load(folder / "embeddings.npy", allow_pickle=False)
            import faiss

            index = faiss.read_index(str(folder / "faiss.index"))
        except ImportError:
            raise
        except Exception as e:
            raise IndexError_(f"{folder}: corrupt or incomplete index ({type(e).__name__}: {e})") from None
        if len(items) != info["count"] or emb.shape[0] != info["count"] or index.ntotal != info["count"]:
            raise IndexError_(f"{folder}: index files disagree on the number of items; rebuild it")
        if info["ann"].get("kind") == "ivf":
            index.nprobe = int(info["ann"]["nprobe"])
        return cls(folder, info, items, emb, index)

    # ---------------------------------------------------------------- search
    @property
    def fingerprint(self) -> str:
        return self.info["model"]["fingerprint"]

    def check_model(self, model) -> None:
        fp = model_fingerprint(model)
        if fp != self.fingerprint:
            built = self.info["model"].get("source") or self.info["model"].get("name")
            raise IndexError_(
                f"{self.folder} was built with model '{built}' (fingerprint {self.fingerprint}); the model given "
                f"has fingerprint {fp}. Search with the same model, or rebuild the index with this one."
            )

    def search_vectors(self, queries: np.ndarray, k: int = 10, nprobe: int | None = None):
        """[M, D] normalised queries -> (scores [M, k], ids [M, k]); ids are -1 where fewer than k exist."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.info["dim"]:
            raise IndexError_(f"query has dimension {q.shape[1]}, the index {self.info['dim']}")
        if nprobe is not None and hasattr(self.faiss_index, "nprobe"):
            self.faiss_index.nprobe = nprobe
        k = max(1, min(int(k), len(self.items)))
        return self.faiss_index.search(q, k)

    def _hits(self, scores, ids) -> list[dict]:
        return [
            {"rank": r + 1, "score": round(float(s), 6), **self.items[int(i)]}
            for r, (s, i) in enumerate(zip(scores, ids)) if i >= 0
        ]

    def search_text(self, query: str, model, tokenizer, k: int = 10, device="cpu") -> list[dict]:
        if not query or not query.strip():
            raise PathVLMError("empty text query")
        if getattr(model, "is_image_only", False):
            from pathvlm.encoders.detect import ImageOnlySource, image_only_message

            raise ImageOnlySource(image_only_message(getattr(model, "pathvlm_source", model.pathvlm_name),
                                                     model.pathvlm_name))
        self.check_model(model)
        q = embed_texts(model, tokenizer, [query.strip()], device=device).numpy()
        scores, ids = self.search_vectors(q, k)
        return self._hits(scores[0], ids[0])

    def search_image(self, image, model, preprocess, k: int = 10, device="cpu") -> list[dict]:
        self.check_model(model)
        return self.search_embedding(embed_images(model, preprocess, [image], strict=True, num_workers=0, device=device), k)

    def search_embedding(self, embedding, k: int = 10) -> list[dict]:
        """Hits for one query embedding already made with this index's model ([1, D] tensor or array)."""
        scores, ids = self.search_vectors(np.asarray(embedding, dtype=np.float32), k)
        return self._hits(scores[0], ids[0])

    def resolve(self, item: dict) -> Path:
        """Absolute path of an item's image."""
        p = Path(item["path"])
        return p if p.is_absolute() or not self.info.get("root") else Path(self.info["root"]) / p


def _read_build_state(state_file: Path, out: Path) -> dict:
    """The unfinished build's record; a damaged one is a clear error (the finished parts are left alone)."""
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        state, why = None, f"{type(e).__name__}: {e}"
    else:
        why = f"holds a JSON {type(state).__name__}, not an object"
    if not isinstance(state, dict):
        raise IndexError_(
            f"{state_file} is corrupt ({why}), so the unfinished build in {out} cannot be resumed safely. "
            f"Delete {out / 'parts'} to start the build over, or choose another --out."
        )
    return state


def _relative(path: Path, root: Path | None) -> str:
    if root is not None and root.is_dir():
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return str(Path(path).resolve())


def _save_part(path: Path, vectors: np.ndarray, ids: list[int], errors: list[tuple[int, str]]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, vectors=vectors.astype(np.float32), ids=np.asarray(ids, dtype=np.int64),
             error_ids=np.asarray([i for i, _ in errors], dtype=np.int64),
             error_messages=np.asarray([m for _, m in errors], dtype=str))
    os.replace(tmp, path)  # a part exists only once it is complete


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
