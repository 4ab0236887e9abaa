"""Images in requests: base64 ``data:`` URLs (or bare base64) only; remote URLs are refused, never fetched.

A request's image is checked in two steps. :func:`request_image` reads only the header (format,
size, the pixel cap, a JPEG whose data is too short for its header): cheap, so it runs before the
request is admitted and its pixels are reserved. :meth:`RequestImage.decode` does the decoding,
inside the request's slot, so images waiting in the queue are held compressed.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass

from PIL import Image

from pathvlm.errors import ImageError
from pathvlm.images import image_header, load_image
from pathvlm.serving.errors import PayloadTooLarge, RequestError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
_ALLOWED_MIME = {"image/png", "image/jpeg", "image/jpg", "image/tiff", "image/webp", "image/bmp", "application/octet-stream"}


def decode_image_payload(value: str, max_bytes: int, field: str = "image") -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URL or a bare base64 string.

    ``http(s)://``, ``file://`` and every other scheme are refused with a 400 naming the rule:
    this server never fetches anything. Oversized payloads are refused (413) before decoding.
    """
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field}: empty image")
    value = value.strip()
    m = _DATA_URL.match(value)
    if m is None:
        scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", value)
        if scheme:  # base64 has no ':', so anything with a scheme is a URL
            raise RequestError(
                f"{field}: {scheme.group(1)!s}: URLs are refused; this server never fetches remote or local files. "
                "Send the image as a base64 data URL (data:image/png;base64,...)", kind="remote_url_refused")
        payload = value
    else:
        mime = (m.group("mime") or "").lower()
        if mime and mime not in _ALLOWED_MIME:
            raise RequestError(f"{field}: data URL of type {mime!r} is not an image (use image/png, image/jpeg, image/tiff)")
        if not m.group("b64"):
            raise RequestError(f"{field}: data URL must be base64-encoded (data:image/png;base64,...)")
        payload = value[m.end():]
    # base64 of n bytes is 4*ceil(n/3) characters: refuse before decoding anything large
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise PayloadTooLarge(f"{field}: image of about {len(payload) * 3 // 4} bytes exceeds the upload limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field}: not valid base64") from None
    if not data:
        raise RequestError(f"{field}: empty image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image of {len(data)} bytes exceeds the upload limit of {max_bytes} bytes")
    return data


def open_request_image(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> Image.Image:
    """Decode uploaded bytes with pathvlm's safe loader (bomb check, truncation, non-images) as a 400/413."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image of {len(data)} bytes exceeds the upload limit of {max_bytes} bytes")
    try:
        return load_image(bytes(data), max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageError as e:
        raise RequestError(f"{field}: {e}", kind="invalid_image") from None


def base64_payload_size(value: str) -> int:
    """Bytes a data URL or bare base64 string would decode to (about), without decoding it."""
    if not isinstance(value, str):
        return 0
    m = _DATA_URL.match(value.strip())
    payload = value.strip()[m.end():] if m else value.strip()
    return len(payload) * 3 // 4


@dataclass
class RequestImage:
    """An uploaded image whose header has been checked but whose pixels are not decoded yet."""

    data: bytes
    format: str
    width: int
    height: int
    field: str
    max_pixels: int
    max_bytes: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def decode(self) -> Image.Image:
        return open_request_image(self.data, self.max_bytes, self.max_pixels, self.field)


def request_image(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> RequestImage:
    """Check ``data``'s size and header (400/413 with a message); nothing is decoded."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: image of {len(data)} bytes exceeds the upload limit of {max_bytes} bytes")
    try:
        fmt, w, h = image_header(bytes(data), max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageError as e:
        raise RequestError(f"{field}: {e}", kind="invalid_image") from None
    return RequestImage(bytes(data), fmt, w, h, field, max_pixels, max_bytes)


def image_to_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
