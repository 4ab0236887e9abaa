"""Reading images safely: PNG, JPEG, TIFF (16-bit, RGBA, grayscale, palette), always to 8-bit RGB.

Every failure is an :class:`ImageError` naming the file. Decompression bombs are refused
(Pillow's DecompressionBombWarning is raised as an error and a pixel cap is checked before
decoding), truncated files are never silently padded, and non-images are named as such.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pathvlm.errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".svs"}
DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000; whole slides go through a tiler, not here
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

ImageSource = Union[str, os.PathLike, bytes, Image.Image]


def _name(source) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return str(source)


def load_image(
    source: ImageSource,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an 8-bit RGB ``PIL.Image``."""
    name = _name(source)
    if isinstance(source, Image.Image):
        _check_pixels(source, name, max_pixels)
        return to_rgb(source, name)
    if isinstance(source, (bytes, bytearray)):
        if max_bytes is not None and len(source) > max_bytes:
            raise ImageError(f"{name}: upload of {len(source)} bytes exceeds the limit of {max_bytes} bytes")
        if not source:
            raise ImageError("empty upload: no image data")
        fp = io.BytesIO(source)
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        size = path.stat().st_size
        if size == 0:
            raise ImageError(f"{name}: empty file")
        if max_bytes is not None and size > max_bytes:
            raise ImageError(f"{name}: file of {size} bytes exceeds the limit of {max_bytes} bytes")
        fp = str(path)
        data = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
            _check_pixels(im, name, max_pixels)
            im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or a format pathvlm cannot read)") from None
    except OSError as e:
        # Pillow cannot decode some valid TIFFs (16-bit RGB, odd sample formats): try tifffile.
        arr = _read_tiff(fp if data is None else data, name, max_pixels) if _looks_like_tiff(fp, data) else None
        if arr is None:
            msg = "truncated or corrupt image" if "truncated" in str(e) or "broken" in str(e) else str(e)
            raise ImageError(f"{name}: {msg}") from None
        return Image.fromarray(arr)
    return to_rgb(im, name)


def _check_pixels(im: Image.Image, name: str, max_pixels: int | None) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has no pixels ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
            "(a decompression bomb, or a whole slide: tile it first)"
        )


def _looks_like_tiff(fp, data: bytes | None) -> bool:
    if data is not None:
        head = data[:4]
    else:
        with open(fp, "rb") as f:
            head = f.read(4)
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _read_tiff(fp, name: str, max_pixels: int | None) -> np.ndarray | None:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(fp) if isinstance(fp, bytes) else fp) as tif:
            page = tif.pages[0]
            shape = page.shape
            if max_pixels is not None and shape[0] * shape[1] > max_pixels:
                raise ImageError(f"{name}: {shape[1]}x{shape[0]} pixels exceeds the limit of {max_pixels} pixels")
            arr = page.asarray()
    except ImageError:
        raise
    except Exception:
        return None
    return array_to_rgb8(arr)


def array_to_rgb8(arr: np.ndarray) -> np.ndarray:
    """Any numeric HxW, HxWx1, HxWx3 or HxWx4 array to HxWx3 uint8 (alpha composited on white)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF
    if arr.dtype != np.uint8:
        arr = _scale_to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 2:  # gray + alpha
        arr = np.concatenate([np.repeat(arr[..., :1], 3, -1), arr[..., 1:]], -1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        top = float(info.max) if arr.max(initial=0) > 255 or info.bits <= 16 else 255.0
        if arr.dtype in (np.int32, np.uint32, np.int64, np.uint64):
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    arr = arr.astype(np.float64)
    lo, hi = np.nanmin(arr), np.nanmax(arr)
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0
    scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(np.nan_to_num(scaled) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image, name: str = "<image>") -> Image.Image:
    """Normalise any Pillow mode to 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return Image.fromarray(array_to_rgb8(np.asarray(im.convert("RGBA") if im.mode != "LA" else im)))
    if im.mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return im.convert("RGB")
    try:  # I;16*, I, F and other high-bit-depth modes
        return Image.fromarray(array_to_rgb8(np.asarray(im)))
    except Exception as e:
        raise ImageError(f"{name}: unsupported image mode {im.mode!r} ({e})") from None


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder``, sorted; a clear error for a missing or empty folder."""
    root = Path(folder)
    if not root.exists():
        raise ImageError(f"{root}: no such folder")
    if root.is_file():
        return [root]
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def expand_image_args(items: Iterable[str]) -> list[Path]:
    """CLI image arguments: files stay as they are, folders expand to their images."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        out.extend(list_images(p) if p.is_dir() else [p])
    return out
