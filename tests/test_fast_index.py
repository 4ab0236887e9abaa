"""Gallery indexing speed-ups keep the embeddings: the split preprocessing is bitwise equal to the transform, and
the ONNX Runtime backend (optional) agrees with torch at cosine >= 0.9999."""
import numpy as np
import pytest
import torch

from pathvlm.split_preprocess import split_preprocess


def test_split_preprocess_is_bitwise_equal(tiny_clip):
    from conftest import he_like_tile

    preprocess = tiny_clip[1]
    split = split_preprocess(preprocess)
    assert split is not None
    images = [he_like_tile(i, size=80 + 7 * i) for i in range(3)] + [he_like_tile(9, size=64).convert("RGBA")]
    ref = torch.stack([preprocess(im) for im in images])
    got = split.finish(torch.stack([split(im) for im in images]))
    assert got.dtype == torch.float32 and torch.equal(got, ref)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert split_preprocess(lambda im: im) is None  # an unknown transform keeps the per-image path


def test_index_with_split_preprocess_equals_the_model(tiny_clip, tile_folder, tmp_path):
    from pathvlm.images import list_images, load_image
    from pathvlm.retrieval.index import GalleryIndex

    model, preprocess = tiny_clip[0], tiny_clip[1]
    idx = GalleryIndex.build(tile_folder, tmp_path / "idx", model, preprocess, progress=False, batch_size=2,
                             num_workers=0)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_image(torch.stack(
            [preprocess(load_image(p)) for p in list_images(tile_folder)])), dim=-1).numpy()
    assert np.abs(idx.embeddings - ref).max() < 1e-4


def test_encoding_in_the_workers_equals_the_main_process(tiny_clip, tile_folder, tmp_path):
    from pathvlm.embed import embed_images
    from pathvlm.errors import ImageError
    from pathvlm.images import list_images
    from pathvlm.retrieval.index import GalleryIndex

    model, preprocess = tiny_clip[0], tiny_clip[1]
    paths = list_images(tile_folder)
    main = GalleryIndex.build(tile_folder, tmp_path / "a", model, preprocess, progress=False, batch_size=2,
                              num_workers=0)
    workers = GalleryIndex.build(tile_folder, tmp_path / "b", model, preprocess, progress=False, batch_size=2,
                                 num_workers=2, encode_in_workers=True)
    assert workers.embeddings.shape == main.embeddings.shape
    assert np.abs(workers.embeddings - main.embeddings).max() < 1e-5  # same order, same tower, one thread each
    with pytest.raises(ImageError, match="needs num_workers >= 1"):
        embed_images(model, preprocess, paths, num_workers=0, batch_size=2, encode_in_workers=True)


def test_onnx_backend_matches_torch(tiny_clip, tile_folder, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("PATHVLM_HOME", str(tmp_path / "home"))
    from pathvlm.errors import PathVLMError
    from pathvlm.onnx_encode import OnnxImageEncoder
    from pathvlm.retrieval.index import GalleryIndex

    model, preprocess = tiny_clip[0], tiny_clip[1]
    enc = OnnxImageEncoder(model, cache_dir=tmp_path / "onnx")
    assert enc.cosine >= 0.9999 and enc.path.exists()
    a = GalleryIndex.build(tile_folder, tmp_path / "a", model, preprocess, progress=False, batch_size=2, num_workers=0)
    b = GalleryIndex.build(tile_folder, tmp_path / "b", model, preprocess, progress=False, batch_size=2, num_workers=0,
                           backend="onnx")
    assert b.info["image_backend"] == "onnx"
    assert (a.embeddings * b.embeddings).sum(1).min() >= 0.9999
    with pytest.raises(PathVLMError, match="fp32"):
        GalleryIndex.build(tile_folder, tmp_path / "c", model, preprocess, progress=False, backend="onnx",
                           precision="bf16")
