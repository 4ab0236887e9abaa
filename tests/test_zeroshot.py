import json

import pytest
import torch
import torch.nn.functional as F

from conftest import he_like_tile
from pathvlm.embed import embed_texts
from pathvlm.errors import PathVLMError
from pathvlm.zeroshot import (PromptSet, ZeroShotClassifier, list_prompt_sets, load_prompt_set,
                              prompt_set_from_names)


def test_shipped_prompt_sets_are_valid():
    names = list_prompt_sets()
    for required in ["lc25000", "lc25000_colon", "crc100k", "crc100k_8", "pcam", "bach", "sicapv2"]:
        assert required in names
    for name in names:
        ps = load_prompt_set(name)
        assert len(ps.classes) >= 2 and ps.source
        assert set(ps.dataset_labels.values()) <= set(ps.classes), name
    assert len(load_prompt_set("crc100k").classes) == 9
    assert len(load_prompt_set("crc100k_8").classes) == 8


def test_typed_classes_with_synonyms():
    ps = prompt_set_from_names("adenocarcinoma|tumour, benign mucosa ,  ")
    assert ps.classes == {"adenocarcinoma": ["adenocarcinoma", "tumour"], "benign mucosa": ["benign mucosa"]}
    assert len(ps.prompts()["adenocarcinoma"]) == 2 * len(ps.templates)
    assert ps.prompts(ensemble=False) == {"adenocarcinoma": [ps.templates[0].format("adenocarcinoma")],
                                          "benign mucosa": [ps.templates[0].format("benign mucosa")]}


@pytest.mark.parametrize("names,match", [("onlyone", "at least two"), ("a,a", "given twice"), ("", "at least two")])
def test_typed_classes_errors(names, match):
    with pytest.raises(PathVLMError, match=match):
        prompt_set_from_names(names)


def test_prompt_set_validation(tmp_path):
    with pytest.raises(PathVLMError, match="exactly one"):
        PromptSet("x", {"a": ["a"], "b": ["b"]}, ["no placeholder"])
    with pytest.raises(PathVLMError, match="unknown task"):
        load_prompt_set("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"classes": {"a": ["a"]}}))
    with pytest.raises(PathVLMError, match="not a valid prompt set"):
        load_prompt_set(str(bad))


def test_class_weights_are_normalised_means_of_normalised_prompts(tiny_clip):
    model, _, tok = tiny_clip
    ps = PromptSet("t", {"tumour": ["tumour", "carcinoma"], "stroma": ["stroma"]}, ["{}.", "an image of {}."])
    clf = ZeroShotClassifier(model, tok, ps)
    by_hand = []
    for prompts in [["tumour.", "an image of tumour.", "carcinoma.", "an image of carcinoma."],
                    ["stroma.", "an image of stroma."]]:
        with torch.no_grad():
            e = F.normalize(model.encode_text(tok(prompts)), dim=-1)
        by_hand.append(F.normalize(e.mean(0), dim=-1))
    assert torch.allclose(clf.weights, torch.stack(by_hand), atol=1e-6)


def test_probabilities_use_the_logit_scale_and_pick_the_matching_class(tiny_clip):
    model, _, tok = tiny_clip
    clf = ZeroShotClassifier(model, tok, prompt_set_from_names("tumour, stroma, fat"))
    feats = clf.weights[[2, 0]]  # image embeddings equal to class 2's and class 0's text embedding
    probs = clf.probabilities(feats)
    assert probs.argmax(-1).tolist() == [2, 0]
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    scale = model.logit_scale.exp().item()
    expected = (scale * feats @ clf.weights.T).softmax(-1)
    assert torch.allclose(probs, expected)


def test_classify_files(tiny_clip, tmp_path):
    model, preprocess, tok = tiny_clip
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"t{i}.png")
        he_like_tile(i).save(paths[-1])
    clf = ZeroShotClassifier(model, tok, load_prompt_set("lc25000_colon"), ensemble=False)
    out = clf.classify_files(paths, preprocess, top_k=5, num_workers=0)
    assert [r["image"] for r in out] == [str(p) for p in paths]
    for r in out:
        assert len(r["top_k"]) == 2  # top-k capped at the number of classes
        assert r["prediction"] == r["top_k"][0]["class"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]


def test_embed_texts_is_batched_consistently(tiny_clip):
    model, _, tok = tiny_clip
    texts = [f"text number {i}" for i in range(7)]
    assert torch.allclose(embed_texts(model, tok, texts, batch_size=3), embed_texts(model, tok, texts), atol=1e-6)


def test_trimming_padding_is_exact_for_masked_text_towers(tiny_clip):
    from pathvlm.embed import trim_padding

    model, _, tok = tiny_clip
    ids = tok(["short", "a somewhat longer query about tumour nests"])
    trimmed = trim_padding(model, ids)
    assert trimmed.shape[1] < ids.shape[1]
    with torch.no_grad():
        assert torch.allclose(model.encode_text(trimmed), model.encode_text(ids), atol=1e-5)
