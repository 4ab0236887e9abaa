"""Batched image and text embedding with a DataLoader: the one place models meet pixels."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pathvlm.cancel import check_cancelled
from pathvlm.errors import ImageError
from pathvlm.images import DEFAULT_MAX_PIXELS, load_image
from pathvlm.split_preprocess import split_preprocess


class ImageFiles(Dataset):
    """Image paths -> (index, tensor) ; unreadable files come back as (index, error message)."""

    def __init__(self, paths: Sequence[str | os.PathLike], preprocess: Callable, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.paths = [p if isinstance(p, (bytes, bytearray)) else str(p) for p in paths]  # files or raw bytes
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i], max_pixels=self.max_pixels)), None
        except ImageError as e:
            return i, None, str(e)


def _collate(batch):
    ok = [(i, t) for i, t, err in batch if err is None]
    errors = [(i, err) for i, _, err in batch if err is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    pixels = torch.stack([t for _, t in ok]) if ok else None
    return idx, pixels, errors


class _EncodeInWorker:
    """A collate function that also runs the image tower, so each loader worker decodes *and* encodes its batches
    on one thread (``encode_in_workers``); the main process only gathers embeddings."""

    def __init__(self, encoder, split, dtype):
        self.encoder, self.split, self.dtype = encoder, split, dtype

    def __call__(self, batch):
        idx, pixels, errors = _collate(batch)
        if pixels is None:
            return idx, None, errors
        with torch.inference_mode():
            return idx, _encode(self.encoder, self.split, pixels, "cpu", self.dtype), errors


def _encode(encoder, split, pixels, device, dtype) -> torch.Tensor:
    """A collated batch (uint8 pixels when ``split``, else preprocessed floats) -> normalised float32 on CPU."""
    if split is not None:
        pixels = split.finish(pixels)
    feats = encoder.encode_image(pixels.to(device=device, dtype=dtype))
    return F.normalize(feats.float(), dim=-1).cpu()


@dataclass
class EmbeddedBatch:
    indices: list[int]
    features: torch.Tensor  # [B, D], L2-normalised, float32 on CPU
    errors: list[tuple[int, str]]


def default_workers() -> int:
    # Decoding runs beside the model; with 2 cores one worker overlaps I/O without starving torch.
    return min(2, max(0, (os.cpu_count() or 1) - 1))


def iter_image_embeddings(
    model,
    preprocess: Callable,
    paths: Sequence[str | os.PathLike],
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "embedding images",
    fast: bool = True,
    precision: str = "fp32",
    backend: str = "torch",
    encode_in_workers: bool = False,
) -> Iterator[EmbeddedBatch]:
    """Yield normalised image embeddings batch by batch (errors reported, never raised).

    ``encode_in_workers`` (CPU, torch backend, ``num_workers`` >= 1): every loader worker runs the image tower
    on the batches it decoded, on one thread each, instead of the main process running it on all threads. On a
    small CPU this keeps every core on useful work: decoding and a multi-threaded tower no longer share the
    cores (docs/benchmarks.md, indexing). Embeddings agree with the main-process path within float32 rounding.

    With ``fast`` the image tower runs through :class:`FastImageEncoder` (BatchNorm folded,
    channels-last; checked equal to the original within float32 rounding), the loader returns uint8 pixels and
    each batch is normalised at once (``pathvlm.split_preprocess``). ``backend="onnx"`` runs the folded tower in
    ONNX Runtime instead (``pathvlm.onnx_encode``; optional dependency).
    """
    from pathvlm.fast_encode import FastImageEncoder, default_batch_size

    num_workers = default_workers() if num_workers is None else num_workers
    batch_size = batch_size or default_batch_size(device)
    # Folding copies the tower and checks it with a forward pass: worth it for a gallery, not for
    # the single image of a query, which goes through the model as it is.
    fast = fast and (len(paths) > batch_size or precision != "fp32")
    if backend != "torch":
        from pathvlm.onnx_encode import onnx_image_encoder

        if precision != "fp32":
            raise ImageError(f"--backend {backend} computes in fp32; drop --precision {precision}")
        encoder, fast = onnx_image_encoder(model, backend=backend, device=device), True
    else:
        encoder = FastImageEncoder(model, precision=precision) if fast else model
    # the loader returns uint8 pixels and the batch is normalised in one pass (pathvlm.split_preprocess)
    split = split_preprocess(preprocess) if fast else None
    dtype = next(model.parameters()).dtype
    collate = _collate
    if encode_in_workers:
        if num_workers < 1 or torch.device(device).type != "cpu" or backend != "torch":
            raise ImageError("encode_in_workers runs the torch image tower in the loader's worker processes: it needs "
                             f"num_workers >= 1, device cpu and backend torch (got {num_workers}, {device}, {backend})")
        collate = _EncodeInWorker(encoder, split, dtype)
    loader = DataLoader(
        ImageFiles(paths, split or preprocess), batch_size=batch_size, num_workers=num_workers,
        collate_fn=collate, persistent_workers=False, prefetch_factor=(2 if encode_in_workers else 8) if num_workers else None,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), desc=desc, unit="img")
    with torch.inference_mode():
        for idx, pixels, errors in loader:
            feats = torch.empty(0)
            if encode_in_workers:
                feats = pixels if pixels is not None else feats
            elif pixels is not None:
                feats = _encode(encoder, split, pixels, device, dtype)
            if bar is not None:
                bar.update(len(idx) + len(errors))
            yield EmbeddedBatch(idx.tolist(), feats, errors)
    if bar is not None:
        bar.close()


def embed_images(model, preprocess, paths, strict: bool = True, **kwargs) -> torch.Tensor:
    """All embeddings as one [N, D] tensor; with ``strict`` the first unreadable file raises."""
    out: dict[int, torch.Tensor] = {}
    for batch in iter_image_embeddings(model, preprocess, paths, **kwargs):
        if batch.errors and strict:
            raise ImageError(batch.errors[0][1])
        for i, f in zip(batch.indices, batch.features):
            out[i] = f
    if not out:
        raise ImageError("no readable images")
    return torch.stack([out[i] for i in sorted(out)])


@torch.inference_mode()
def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256, device="cpu") -> torch.Tensor:
    """Normalised text embeddings [N, D], float32 on CPU. Stops between batches when the current
    :func:`pathvlm.cancel.cancel_scope` is cancelled."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        check_cancelled()
        tokens = trim_padding(model, tokenizer(list(texts[start:start + batch_size]))).to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(chunks)




def trim_padding(model, tokens: torch.Tensor) -> torch.Tensor:
    """Drop padding columns that no sequence in the batch uses.

    Exact for text towers that mask padding (HF encoders with mean/CLS pooling): the result is
    identical to the padded batch, at a fraction of the cost for short queries. Towers that
    use absolute positions of padding (open_clip's built-in text transformer pools at argmax)
    are left untouched.
    """
    text = getattr(model, "text", None)
    pad = getattr(getattr(text, "config", None), "pad_token_id", None)
    if pad is None or not hasattr(text, "pooler") or tokens.ndim != 2:
        return tokens
    used = (tokens != pad).any(0).nonzero()
    return tokens[:, : int(used.max()) + 1] if used.numel() else tokens
