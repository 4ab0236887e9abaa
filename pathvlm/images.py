"""Reading images safely: PNG, JPEG, TIFF, WebP, BMP (16-bit, RGBA, grayscale, palette), always to 8-bit RGB.

Every failure is an :class:`ImageError` naming the file. Decompression bombs are refused
(Pillow's DecompressionBombWarning is raised as an error and a pixel cap is checked from the
header, before decoding), truncated files are never silently padded (nor JPEGs whose header
claims more pixels than their data can hold), and non-images are named as such. Only the
formats in :data:`ALLOWED_FORMATS` are opened: Pillow's other plugins (EPS, which runs
Ghostscript, PDF, GIF, ...) are never invoked, and such files are refused by name. The EXIF
orientation is applied, so a photo taken sideways comes out the way it was meant to be seen.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pathvlm.errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image

# The formats a pathology user sends (Pillow plugin names); everything else is refused by name.
ALLOWED_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP")
# What Pillow's plugins raise on malformed files besides OSError (its fuzz tests expect these).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, KeyError,
                 ZeroDivisionError)

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
    formats: Sequence[str] | None = ALLOWED_FORMATS,
) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an 8-bit RGB ``PIL.Image``.

    ``formats``: the Pillow formats that may be opened (None: every format Pillow knows).
    """
    name = _name(source)
    if isinstance(source, Image.Image):
        _check_pixels(source, name, max_pixels)
        return to_rgb(source, name)
    fp, data = _open_source(source, name, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = _open(fp, data, name, formats)
            _check_pixels(im, name, max_pixels)
            if im.format == "JPEG":
                _check_jpeg_data(data if data is not None else Path(fp).read_bytes(), name, im.size)
            im.load()
            im = _apply_orientation(im)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from None
    except MemoryError:
        raise ImageError(f"{name}: too large to decode") from None
    except DECODE_ERRORS as e:
        # Pillow cannot decode some valid TIFFs (16-bit RGB, odd sample formats): try tifffile.
        arr = None
        if isinstance(e, OSError) and _looks_like_tiff(fp, data):
            arr = _read_tiff(fp if data is None else data, name, max_pixels)
        if arr is None:
            raise ImageError(f"{name}: {_decode_error_message(e)}") from None
        return Image.fromarray(arr)
    return to_rgb(im, name)


def image_header(
    source: str | os.PathLike | bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    formats: Sequence[str] | None = ALLOWED_FORMATS,
) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header alone, with the same refusals as :func:`load_image`
    up to decoding: nothing is decoded, so this is cheap enough to run before admitting a request."""
    name = _name(source)
    fp, data = _open_source(source, name, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(fp, data, name, formats) as im:
                _check_pixels(im, name, max_pixels)
                if im.format == "JPEG":
                    _check_jpeg_data(data if data is not None else Path(fp).read_bytes(), name, im.size)
                return im.format, im.size[0], im.size[1]
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: refused as a decompression bomb ({e})") from None
    except DECODE_ERRORS as e:
        raise ImageError(f"{name}: {_decode_error_message(e)}") from None


def _open_source(source, name: str, max_bytes: int | None):
    """(what Image.open reads, the bytes when the source is bytes)."""
    if isinstance(source, (bytes, bytearray)):
        if max_bytes is not None and len(source) > max_bytes:
            raise ImageError(f"{name}: upload of {len(source)} bytes exceeds the limit of {max_bytes} bytes")
        if not source:
            raise ImageError("empty upload: no image data")
        data = bytes(source)
        return io.BytesIO(data), data
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
    return str(path), None


def _open(fp, data: bytes | None, name: str, formats: Sequence[str] | None) -> Image.Image:
    try:
        return Image.open(fp, formats=list(formats) if formats is not None else None)
    except UnidentifiedImageError:
        head = data[:64] if data is not None else _head(fp)
        known = sniff_format(head)
        allowed = ", ".join(f.replace("WEBP", "WebP") for f in (formats or ALLOWED_FORMATS))
        if known and (formats is None or known.split(" ")[0].upper() not in formats):
            raise ImageError(f"{name}: {known} files are not accepted; send {allowed}") from None
        raise ImageError(f"{name}: not an image (or a format pathvlm cannot read; send {allowed})") from None


def _head(path, n: int = 64) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


# magic numbers of formats Pillow (or a browser) may know but pathvlm does not open: named in the refusal,
# recognised here without handing the bytes to any Pillow plugin
_MAGIC = [
    (b"%!PS", "EPS (PostScript)"), (b"\xc5\xd0\xd3\xc6", "EPS (PostScript)"), (b"%PDF", "PDF"),
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD (Photoshop)"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xffO\xffQ", "JPEG 2000"),
    (b"DDS ", "DDS"), (b"icns", "ICNS"), (b"qoif", "QOI"), (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"\x01\xda", "SGI"), (b"FORM", "IFF"), (b"\x76\x2f\x31\x01", "OpenEXR"), (b"#?RADIANCE", "HDR"),
    (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
]


def sniff_format(head: bytes) -> str | None:
    """A format's name from its first bytes (None when unknown); never runs a decoder."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "AVIF" if brand in (b"avif", b"avis") else "HEIF/HEIC" if brand in (b"heic", b"heix", b"mif1", b"msf1") else None
    if len(head) > 2 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "PNM (netpbm)"
    text = head.lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")):
        return "SVG/XML"
    return None


def _decode_error_message(e: Exception) -> str:
    text = str(e)
    if "truncated" in text or "broken" in text or isinstance(e, (EOFError, struct.error, IndexError)):
        return "truncated or corrupt image"
    if "MAX_TEXT_CHUNK" in text or "too large" in text.lower():
        return "damaged or oversized metadata (a text or colour-profile chunk over Pillow's safety limit)"
    return f"damaged image ({type(e).__name__}: {text[:200]})"


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says (cameras and some scanners set it)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: keep the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation not in (1, None) else im


def _check_jpeg_data(data: bytes, name: str, size: tuple[int, int]) -> None:
    """Refuse a Huffman-coded JPEG whose data is too short for the pixels its header claims.

    libjpeg decodes such a file without an error and fills the missing blocks with grey. Every 8x8
    block of every component costs at least one bit of entropy-coded data (its DC code; baseline
    scans also need an end-of-block code), so fewer bytes than blocks/8 cannot be a whole image.
    A real flat 6000x4000 JPEG is over 100 kB; one holding 224x224 worth of data is about 20 kB.
    """
    sof = _jpeg_frame(data)
    if sof is None:
        return
    marker, comps = sof
    if marker in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
        return  # arithmetic coding has no per-block minimum
    w, h = size
    hmax = max(c[0] for c in comps)
    vmax = max(c[1] for c in comps)
    blocks = sum(_ceil_div(_ceil_div(w * hs, hmax), 8) * _ceil_div(_ceil_div(h * vs, vmax), 8) for hs, vs in comps)
    if len(data) * 8 < blocks:
        raise ImageError(f"{name}: damaged JPEG: its header claims {w}x{h} pixels but it holds data for far fewer "
                         f"({len(data)} bytes for {blocks} blocks)")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _jpeg_frame(data: bytes):
    """(SOF marker, [(h, v) sampling per component]) of a JPEG, or None if it cannot be parsed."""
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            seg = data[i + 4:i + 2 + length]
            if len(seg) < 6:
                return None
            ncomp = seg[5]
            comps = []
            for k in range(ncomp):
                off = 6 + 3 * k
                if off + 2 > len(seg):
                    return None
                sampling = seg[off + 1]
                comps.append((max(1, sampling >> 4), max(1, sampling & 15)))
            return (marker, comps) if comps else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


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
