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


# ---------------------------------------------------------------------- hostile files (issue 14)
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


@pytest.mark.parametrize("kind,prefix", [(b"zTXt", b"Comment\x00\x00"), (b"iCCP", b"profile\x00\x00")])
def test_png_with_oversized_compressed_chunk_is_an_image_error(kind, prefix):
    import zlib

    png = _png(Image.fromarray(noise()))
    hostile = png[:33] + _png_chunk(kind, prefix + zlib.compress(b"A" * 20_000_000)) + png[33:]  # after IHDR
    assert len(hostile) < 40_000
    with pytest.raises(ImageError, match="oversized metadata"):
        load_image(hostile)


def _lying_jpeg(claimed=(6000, 4000)) -> bytes:
    import struct

    data = bytearray(_png(Image.fromarray(noise(224, 224)), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", claimed[1], claimed[0])  # height, width
    return bytes(data)


def test_jpeg_whose_header_claims_more_pixels_than_its_data_is_refused():
    from pathvlm.images import image_header

    liar = _lying_jpeg()
    for read in (load_image, image_header):
        with pytest.raises(ImageError, match="damaged JPEG.*6000x4000"):
            read(liar)
    # real JPEGs of that size pass, even flat ones that compress to little (baseline and progressive)
    flat = Image.new("RGB", (6000, 4000), (230, 190, 215))
    for kw in ({}, {"progressive": True, "optimize": True}):
        assert image_header(_png(flat, "JPEG", **kw)) == ("JPEG", 6000, 4000)
    assert load_image(_png(Image.new("L", (3000, 2000), 90), "JPEG", progressive=True, optimize=True)).size == (3000, 2000)


@pytest.mark.parametrize("data,name", [
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "EPS"),
    (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "EPS"),
    (b"%PDF-1.4\n1 0 obj\n", "PDF"),
])
def test_other_formats_are_refused_by_name_without_their_plugins(data, name, monkeypatch):
    from PIL import EpsImagePlugin

    def no_ghostscript(*a, **k):
        raise AssertionError("the EPS plugin ran")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", no_ghostscript)
    with pytest.raises(ImageError, match=f"{name}.*not accepted; send PNG, JPEG, TIFF, WebP, BMP"):
        load_image(data)


def test_gif_is_refused_by_name_and_allowed_formats_still_open():
    with pytest.raises(ImageError, match="GIF files are not accepted"):
        load_image(_png(Image.fromarray(noise()).convert("P"), "GIF"))
    assert load_image(_png(Image.fromarray(noise()).convert("P"), "GIF"), formats=None).size == (30, 40)


def test_exif_orientation_is_applied():
    arr = noise(20, 30)  # 30 wide, 20 high as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    out = load_image(_png(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (20, 30)
    plain = load_image(_png(Image.fromarray(arr), "JPEG", quality=95))
    assert plain.size == (30, 20)
    assert np.abs(np.asarray(out).astype(int) - np.rot90(np.asarray(plain), k=-1).astype(int)).mean() < 3
