import json

import numpy as np
import pytest

from pathvlm.clip.factory import create_clip
from pathvlm.errors import ImageError, IndexError_, PathVLMError
from pathvlm.retrieval import index as index_mod
from pathvlm.retrieval.ann import build_faiss, perturbed_queries, recall_at_k
from pathvlm.retrieval.index import GalleryIndex


def build(tile_folder, out, tiny_clip, **kw):
    model, preprocess, _ = tiny_clip
    return GalleryIndex.build(tile_folder, out, model, preprocess, source="tiny", progress=False, num_workers=0, **kw)


def test_build_search_save_reload(tile_folder, tmp_path, tiny_clip):
    model, preprocess, tok = tiny_clip
    idx = build(tile_folder, tmp_path / "idx", tiny_clip)
    assert idx.info["count"] == 6 and idx.info["ann"]["kind"] == "flat"
    assert {it["path"] for it in idx.items} == {f"{'a' if i % 2 else 'b'}/tile{i}.png" for i in range(6)}
    assert all("hue" in it for it in idx.items)  # metadata.jsonl attached
    hits = idx.search_text("tumour nest", model, tok, k=4)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert all(hits[i]["score"] >= hits[i + 1]["score"] for i in range(3))
    # scores are cosine similarities of the stored embeddings
    q = __import__("pathvlm.embed", fromlist=["x"]).embed_texts(model, tok, ["tumour nest"]).numpy()[0]
    assert hits[0]["score"] == pytest.approx(float(idx.embeddings[hits[0]["id"]] @ q), abs=1e-5)
    # image search: an indexed image finds itself first
    first = idx.resolve(idx.items[3])
    self_hit = idx.search_image(first, model, preprocess, k=2)[0]
    assert self_hit["id"] == 3 and self_hit["score"] == pytest.approx(1.0, abs=1e-4)
    again = GalleryIndex.load(tmp_path / "idx")
    assert again.search_text("tumour nest", model, tok, k=4) == hits
    assert not (tmp_path / "idx" / "parts").exists()


def test_k_larger_than_gallery(tile_folder, tmp_path, tiny_clip):
    model, _, tok = tiny_clip
    idx = build(tile_folder, tmp_path / "idx", tiny_clip)
    assert len(idx.search_text("x", model, tok, k=100)) == 6
    with pytest.raises(PathVLMError, match="empty text query"):
        idx.search_text("  ", model, tok)


def test_search_with_another_model_is_refused(tile_folder, tmp_path, tiny_clip, tiny_vit_open_clip_dir):
    idx = build(tile_folder, tmp_path / "idx", tiny_clip)
    other, _, other_tok = create_clip(str(tiny_vit_open_clip_dir))
    with pytest.raises(IndexError_, match="was built with model 'tiny'"):
        idx.search_text("tumour", other, other_tok)


def test_unreadable_images_are_skipped_and_reported(tile_folder, tmp_path, tiny_clip):
    (tile_folder / "a" / "broken.png").write_text("not an image")
    idx = build(tile_folder, tmp_path / "idx", tiny_clip)
    assert idx.info["count"] == 6
    assert idx.info["skipped"][0]["path"] == "a/broken.png" and "not an image" in idx.info["skipped"][0]["error"]


def test_empty_folder_and_missing_index(tmp_path, tiny_clip):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images found"):
        build(tmp_path / "empty", tmp_path / "idx", tiny_clip)
    with pytest.raises(IndexError_, match="not a pathvlm index"):
        GalleryIndex.load(tmp_path / "empty")


def test_corrupt_index_is_a_clear_error(tile_folder, tmp_path, tiny_clip):
    build(tile_folder, tmp_path / "idx", tiny_clip)
    (tmp_path / "idx" / "faiss.index").write_bytes(b"garbage")
    with pytest.raises(IndexError_, match="corrupt or incomplete"):
        GalleryIndex.load(tmp_path / "idx")


def test_interrupted_build_resumes_to_the_same_index(tile_folder, tmp_path, tiny_clip, monkeypatch):
    reference = build(tile_folder, tmp_path / "ref", tiny_clip, part_size=2)
    real_save = index_mod._save_part
    calls = {"n": 0}

    def crash_after_two_parts(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        calls["n"] += 1
        return real_save(*args, **kwargs)

    monkeypatch.setattr(index_mod, "_save_part", crash_after_two_parts)
    with pytest.raises(KeyboardInterrupt):
        build(tile_folder, tmp_path / "idx", tiny_clip, part_size=2)
    assert len(list((tmp_path / "idx" / "parts").glob("part-*.npz"))) == 2
    with pytest.raises(IndexError_, match="unfinished build"):
        GalleryIndex.load(tmp_path / "idx")
    monkeypatch.setattr(index_mod, "_save_part", real_save)
    embedded = []
    real_iter = index_mod.iter_image_embeddings

    def counting_iter(model, preprocess, chunk, **kw):
        embedded.extend(chunk)
        return real_iter(model, preprocess, chunk, **kw)

    monkeypatch.setattr(index_mod, "iter_image_embeddings", counting_iter)
    resumed = build(tile_folder, tmp_path / "idx", tiny_clip, part_size=2)
    assert len(embedded) == 2  # only the last part was embedded again
    assert np.array_equal(resumed.embeddings, reference.embeddings)
    assert resumed.items == reference.items
    # a different model may not continue someone else's partial build
    (tmp_path / "idx2" / "parts").mkdir(parents=True)
    (tmp_path / "idx2" / "parts" / "build.json").write_text(json.dumps({"fingerprint": "x", "items": [], "part_size": 2}))
    with pytest.raises(IndexError_, match="unfinished build with another model"):
        build(tile_folder, tmp_path / "idx2", tiny_clip, part_size=2)


def clustered_vectors(n, d, clusters, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ivf_index_above_threshold_is_calibrated_to_recall():
    x = clustered_vectors(4000, 32, 50)
    index, info = build_faiss(x, ann_threshold=1000, target_recall=0.95)
    assert info.kind == "ivf" and info.nlist >= 64 and info.calibrated_recall_at_10 >= 0.95
    import faiss

    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    q = perturbed_queries(x, 100, np.random.default_rng(7))
    _, truth = exact.search(q, 10)
    _, found = index.search(q, 10)
    assert recall_at_k(found, truth) >= 0.9  # fresh queries, same distribution


def test_recall_at_k_by_hand():
    assert recall_at_k(np.array([[1, 2, 3]]), np.array([[3, 4, 1]]), k=3) == pytest.approx(2 / 3)


def test_ivf_index_round_trip(tile_folder, tmp_path, tiny_clip):
    idx = build(tile_folder, tmp_path / "idx", tiny_clip, ann_threshold=2)
    assert idx.info["ann"]["kind"] == "ivf"
    assert GalleryIndex.load(tmp_path / "idx").faiss_index.nprobe == idx.info["ann"]["nprobe"]


def test_fast_encoder_matches_the_model(tiny_clip):
    import torch

    from pathvlm.fast_encode import FastImageEncoder, fold_conv_bn

    model, _, _ = tiny_clip
    fast = FastImageEncoder(model)
    assert fast.visual is not None  # the tiny timm EfficientNet has Conv+BN pairs to fold
    assert fold_conv_bn(__import__("copy").deepcopy(model.visual).eval()) > 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast.encode_image(x), model.encode_image(x), atol=1e-5)


def test_fold_conv_bn_by_hand():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 2)
    net[1].bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    ref = net(x)
    from pathvlm.fast_encode import fold_conv_bn

    assert fold_conv_bn(net) == 1 and isinstance(net[1], nn.Identity)
    assert torch.allclose(net(x), ref, atol=1e-5)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "", "\udcff"])
def test_corrupt_build_state_is_a_clear_error_and_keeps_the_parts(tile_folder, tmp_path, tiny_clip, content):
    out = tmp_path / "idx"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "part-00000.npz").write_bytes(b"kept")
    (out / "parts" / "build.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(IndexError_, match=r"build.json is corrupt.*Delete .*parts to start the build over"):
        build(tile_folder, out, tiny_clip, part_size=2)
    assert (out / "parts" / "part-00000.npz").read_bytes() == b"kept"  # nothing saved is lost


def test_part_size_must_be_positive(tile_folder, tmp_path, tiny_clip):
    with pytest.raises(PathVLMError, match="part_size must be a positive"):
        build(tile_folder, tmp_path / "idx", tiny_clip, part_size=0)
