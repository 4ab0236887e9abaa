import io
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathvlm.errors import ImageError
from pathvlm.images import expand_image_args, list_images, load_image


def _png(im: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(h=40, w=30, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP", "WEBP"])
def test_rgb_formats_roundtrip_shape(fmt):
    im = load_image(_png(Image.fromarray(noise()), fmt))
    assert im.mode == "RGB" and im.size == (30, 40)
    if fmt in ("PNG", "TIFF", "BMP"):
        assert np.array_equal(np.asarray(im), noise())


def test_16bit_grayscale_tiff_scales_to_8bit():
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    im = load_image(_png(Image.fromarray(arr), "TIFF"))
    out = np.asarray(im)
    assert im.mode == "RGB"
    assert out[..., 0].tolist() == [[0, 255], [128, 1]]
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_rgb_tiff_via_tifffile():
    arr = np.zeros((4, 5, 3), dtype=np.uint16)
    arr[0, 0] = (65535, 0, 32896)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb")
    out = np.asarray(load_image(buf.getvalue()))
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [255, 0, 128]


def test_rgba_composited_on_white():
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (255, 0, 0, 0)  # transparent -> white
    arr[1, 0] = (0, 0, 0, 128)  # half black -> mid grey
    out = np.asarray(load_image(_png(Image.fromarray(arr, "RGBA"))))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert 120 <= out[1, 0, 0] <= 135


def test_grayscale_and_palette():
    g = load_image(_png(Image.fromarray(noise(c=1)[..., 0], "L")))
    assert g.mode == "RGB"
    p = Image.fromarray(noise()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pim = load_image(_png(p))
    assert pim.mode == "RGB" and np.array_equal(np.asarray(pim), np.asarray(p.convert("RGB")))
    p.info["transparency"] = 0
    assert load_image(_png(p, transparency=0)).mode == "RGB"


def test_cmyk_jpeg():
    im = Image.fromarray(noise()).convert("CMYK")
    assert load_image(_png(im, "JPEG")).mode == "RGB"


def test_pixel_cap_refuses_before_decoding():
    data = _png(Image.new("L", (3000, 3000)))  # compresses to a few kB
    with pytest.raises(ImageError, match="exceeds the limit of 1000000 pixels"):
        load_image(data, max_pixels=1_000_000)


def test_decompression_bomb_warning_is_an_error(monkeypatch):
    data = _png(Image.new("L", (400, 400)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # warns above this, errors above 2x
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(data, max_pixels=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 150_000)  # 160k pixels: only the warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(data, max_pixels=None)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_names_the_file(tmp_path, fmt):
    data = _png(Image.fromarray(noise(200, 200)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\..*(truncated|corrupt|broken)"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a PNG")
    with pytest.raises(ImageError, match="notes.png: not an image"):
        load_image(path)


def test_empty_missing_and_folder(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png: empty file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="empty upload"):
        load_image(b"")


def test_byte_cap():
    with pytest.raises(ImageError, match="exceeds the limit of 10 bytes"):
        load_image(_png(Image.fromarray(noise())), max_bytes=10)


def test_list_images_errors_and_sorting(tmp_path):
    with pytest.raises(ImageError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(ImageError, match="no such folder"):
        list_images(tmp_path / "nope")
    for name in ["b.png", "a.JPG", "sub/c.tif", "readme.txt"]:
        p = tmp_path / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.JPG", "b.png", "sub/c.tif"]
    assert len(expand_image_args([str(tmp_path), str(tmp_path / "b.png")])) == 4
