"""Images in requests: base64 ``data:`` URLs (or bare base64) only; remote URLs are refused, never fetched."""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image

from pathvlm.errors import ImageError
from pathvlm.images import load_image
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


def image_to_data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()
