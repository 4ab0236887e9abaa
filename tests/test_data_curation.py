import io
import random

import numpy as np
import pytest
from PIL import Image

from pathvlm.data import dedup, text_clean
from pathvlm.data.splits import LeakageError, assign_splits, audit_leakage, require_no_leakage
from pathvlm.data.stain import MacenkoNormalizer, ReinhardNormalizer, macenko_stain_matrix, stain_jitter


@pytest.mark.parametrize("raw,clean", [
    (" A, Spindle cells in fascicles (B), with vacuoles.", "Spindle cells in fascicles, with vacuoles."),
    ("(A) Low power. B, the glands are fused [12].", "Low power. The glands are fused."),
    ("A and B, Glands (Fig. 3) see http://x.org/y", "Glands see"),
    ("A tumour with glands.", "A tumour with glands."),
    ("  many   spaces  here ", "Many spaces here"),
])
def test_clean_caption(raw, clean):
    assert text_clean.clean_caption(raw) == clean


def test_visual_sentence_filter():
    res = text_clean.visual_sentences(
        "Sheets of atypical cells with hyperchromatic nuclei. The patient was a 45-year-old woman. "
        "She was treated with chemotherapy and is alive 2 years later. Synovial chondromatosis. See")
    assert res.kept == ["Sheets of atypical cells with hyperchromatic nuclei.", "Synovial chondromatosis."]
    assert len(res.removed) == 3


def test_language_and_length():
    assert text_clean.looks_english("The glands are lined by atypical cells with mitoses.")
    assert not text_clean.looks_english("Die Drüsen sind von atypischen Zellen ausgekleidet und zeigen Mitosen.")
    assert not text_clean.looks_english("腺体由异型细胞排列")
    assert text_clean.word_count("a b  c") == 3


def _jpeg(img, q=85):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_dhash_finds_near_duplicates_not_different_images():
    rng = np.random.default_rng(0)
    base = Image.fromarray((np.kron(rng.random((8, 8)), np.ones((32, 32))) * 255).astype(np.uint8)).convert("RGB")
    variants = [base.resize((200, 200)), _jpeg(base, 60), base.point(lambda v: min(255, v + 6))]
    other = Image.fromarray((np.kron(rng.random((8, 8)), np.ones((32, 32))) * 255).astype(np.uint8)).convert("RGB")
    h = dedup.dhash(base)
    assert all(dedup.hamming(h, dedup.dhash(v)) <= 4 for v in variants)
    assert dedup.hamming(h, dedup.dhash(other)) > 12


def test_banded_near_duplicate_search_equals_brute_force():
    rng = random.Random(0)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    for i in range(0, 60, 3):  # plant near-duplicates
        hashes[i + 1] = hashes[i] ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64))
    brute = sorted((i, j) for i in range(300) for j in range(i + 1, 300) if dedup.hamming(hashes[i], hashes[j]) <= 4)
    assert dedup.near_duplicate_pairs(hashes, 4) == brute and len(brute) >= 20
    clusters = dedup.duplicate_clusters(300, brute)
    assert clusters[1] == 0 and clusters[2] == 2


def test_caption_near_duplicates_minhash_lsh():
    a = ("Low power view showing sheets of atypical cells with large hyperchromatic nuclei and frequent mitoses in "
         "the stroma of the tumour")
    b = ("Low power view showing sheets of atypical cells with large hyperchromatic nuclei and frequent mitoses in "
         "the stroma of this tumour")
    c = "Benign colonic mucosa with regular crypts lined by goblet cells and no atypia at all"
    nd = dedup.caption_near_duplicates([a, c, b, a.upper(), c], threshold=0.8)
    # a ~ b (Jaccard 17/21 of word 3-shingles), a == a.upper() once normalised, c == c
    assert dedup.duplicate_clusters(5, nd.edges).tolist() == [0, 1, 0, 0, 1]
    assert nd.pair_count == 3 + 1  # {a, b, A} three pairs, {c, c} one
    assert dedup.caption_near_duplicates([a, c], threshold=0.8).pair_count == 0
    assert dedup.minhash(a).jaccard(dedup.minhash(b)) > 0.6
    from datasketch import MinHash

    fresh = MinHash(num_perm=128, seed=1)  # reused permutations give a fresh MinHash's signature exactly
    fresh.update_batch([s.encode("utf-8") for s in sorted(dedup.shingles(a))])
    assert (dedup.minhash(a).hashvalues == fresh.hashvalues).all()


def test_dhash_is_imagehash():
    import imagehash
    from PIL import Image

    img = Image.fromarray((np.arange(64 * 64 * 3) % 251).reshape(64, 64, 3).astype("uint8"))
    assert dedup.dhash(img) == int(str(imagehash.dhash(img)), 16)


def test_group_splits_keep_groups_whole_and_are_order_free():
    groups = [f"g{i % 97}" for i in range(2000)]
    a = assign_splits(groups, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    b = assign_splits(list(reversed(groups)), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert a == b
    sizes = {s: sum(1 for g in groups if a[g] == s) for s in ("train", "val", "test")}
    assert abs(sizes["train"] - 1600) < 60 and sizes["val"] > 100 and sizes["test"] > 100
    rows = [{"id": str(i), "group": g, "split": a[g]} for i, g in enumerate(groups)]
    assert audit_leakage(rows).ok


def test_audit_fails_on_planted_leaks():
    rows = [{"id": "1", "group": "slide-1", "split": "train", "image_sha256": "x"},
            {"id": "2", "group": "slide-1", "split": "test", "image_sha256": "y"},
            {"id": "3", "group": "slide-2", "split": "train", "image_sha256": "z"},
            {"id": "4", "group": "slide-3", "split": "val", "image_sha256": "z"}]
    report = audit_leakage(rows, near_pairs=[(2, 3)])
    assert report.shared_groups == {"slide-1": ["test", "train"]}
    assert report.shared_images == [("z", ["train", "val"])] and report.near_duplicate_pairs == [("3", "4")]
    with pytest.raises(LeakageError, match="1 shared groups"):
        require_no_leakage(report)


RUIFROK_H = np.array([0.65, 0.70, 0.29])
RUIFROK_E = np.array([0.07, 0.99, 0.11])


def synthetic_he(seed=0, scale_h=1.0, size=64):
    rng = np.random.default_rng(seed)
    ch = rng.gamma(2.0, 0.35, (size, size)) * scale_h
    ce = rng.gamma(2.0, 0.25, (size, size))
    od = ch[..., None] * RUIFROK_H / np.linalg.norm(RUIFROK_H) + ce[..., None] * RUIFROK_E / np.linalg.norm(RUIFROK_E)
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


def test_macenko_recovers_stain_vectors():
    stains = macenko_stain_matrix(synthetic_he())
    assert stains[0] @ (RUIFROK_H / np.linalg.norm(RUIFROK_H)) > 0.97
    assert stains[1] @ (RUIFROK_E / np.linalg.norm(RUIFROK_E)) > 0.97


def test_macenko_and_reinhard_normalise_towards_the_target():
    target, source = synthetic_he(0), synthetic_he(1, scale_h=2.0)
    m = MacenkoNormalizer().fit(target)
    assert np.abs(m.transform(target).astype(float) - target).mean() < 3
    assert abs(m.transform(source).mean() - target.mean()) < abs(source.mean() - target.mean())
    r = ReinhardNormalizer().fit(target)
    from skimage.color import rgb2lab

    out = rgb2lab(r.transform(source)).reshape(-1, 3)
    assert np.allclose(out.mean(0), rgb2lab(target).reshape(-1, 3).mean(0), atol=1.5)


def test_stain_jitter_is_seeded_and_bounded():
    img = synthetic_he()
    a, b = stain_jitter(img, np.random.default_rng(1)), stain_jitter(img, np.random.default_rng(1))
    assert np.array_equal(a, b) and a.shape == img.shape
    assert 0 < np.abs(a.astype(int) - img).mean() < 30


def test_hed_jitter_inverts_the_deconvolution_exactly_where_rgb2hed_clamps():
    from skimage.color import hed2rgb, rgb2hed

    from pathvlm.data.stain import hed_jitter

    img = synthetic_he()
    assert np.array_equal(hed_jitter(img, np.random.default_rng(0), sigma=0, bias=0), img)
    skimage_round_trip = np.clip(hed2rgb(rgb2hed(img)) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(skimage_round_trip.astype(int) - img).max() > 1  # the clamp the exact inverse avoids
    a, b = hed_jitter(img, np.random.default_rng(2)), hed_jitter(img, np.random.default_rng(2))
    assert np.array_equal(a, b) and 0 < np.abs(a.astype(int) - img).mean() < 30


def test_model_sentence_filter_scores_against_prototypes(tiny_clip):
    model, _, tok = tiny_clip
    keep_all = text_clean.ModelSentenceFilter(model, tok, margin=-10.0)
    keep_none = text_clean.ModelSentenceFilter(model, tok, margin=10.0)
    s = "Sheets of atypical cells."
    assert keep_all(s) is True and keep_none(s) is False
    default = text_clean.ModelSentenceFilter(model, tok)
    e = default._embed([s])[0]
    assert default(s) == (float(e @ default.visual) - float(e @ default.clinical) > 0)


def test_caption_curation_gives_the_same_rows_and_card_with_the_model_filter_path_and_on_the_pool(monkeypatch):
    """The model filter runs the same per-caption steps in the main process; with the rule as its 'model' it must
    give what the rule gives, and 2 workers what 1 gives."""
    from collections import Counter

    import pathvlm.clip.factory
    from pathvlm.data import build
    from pathvlm.data.config import CurationConfig, RecipeConfig

    texts = ["H&E section showing glands with atypia. The patient was 54 years old.", "  ", "The patient recovered.",
             "Sheets of atypical cells with mitoses.", "Ceci n'est pas une légende française du tout.", "Glands."]
    rows = [{"task": "caption", "text": t, "source": "s", "id": str(k)} for k, t in enumerate(texts * 400)]
    rows.insert(3, {"task": "classification", "text": "", "source": "s", "id": "x"})

    def curate(mode, workers):
        recipe = RecipeConfig(name="t", sources=[], curation=CurationConfig(visual_filter=mode, min_words=2))
        malformed, card = Counter(), {}
        out = build.curate_text([dict(r) for r in rows], recipe, malformed, build.StageLog(), card, workers)
        return out, dict(malformed), {**card["visual_filter"], "mode": None}

    monkeypatch.setattr(pathvlm.clip.factory, "create_clip", lambda source: (None, None, None))
    monkeypatch.setattr(text_clean, "ModelSentenceFilter", lambda model, tok: text_clean.is_visual_sentence)
    rule = curate("rule", 1)
    assert rule[0] and rule[1] == {"s: empty caption": 400} and rule[2]["sentences_removed"] > 0
    assert curate("model", 1) == rule == curate("rule", 2)


def test_column_split_assignment_matches_assign_splits():
    """The build assigns splits on numpy columns (pathvlm.data.build.assign_group_splits); it must cut exactly where
    splits.assign_splits does, including groups of very different sizes and zero ratios."""
    import numpy as np

    from pathvlm.data.build import assign_group_splits

    rng = np.random.default_rng(0)
    for ratios in ({"train": 0.8, "val": 0.1, "test": 0.1}, {"train": 1, "val": 0, "test": 1}, {"a": 3, "b": 1}):
        names = sorted({f"src/g{int(x)}" for x in rng.integers(0, 10_000, 500)})
        counts = rng.integers(1, 60, len(names))
        groups = [g for g, c in zip(names, counts) for _ in range(c)]
        expected = assign_splits(groups, ratios, seed=7)
        got = assign_group_splits(counts, np.array([g.encode() for g in names]), ratios, seed=7)
        split_names = list(ratios)
        assert {g: split_names[k] for g, k in zip(names, got.tolist())} == expected


def test_duplicate_clusters_are_connected_components_named_by_their_smallest_item():
    """scipy's connected components against a plain union-find, on random sparse graphs with chains (a long
    chain needs many union steps), self-pairs and repeated pairs; and bad indices are refused."""
    import numpy as np
    import pytest

    def union_find(n, pairs):
        parent = list(range(n))

        def find(x):
            while parent[x] != x:
                x = parent[x]
            return x

        for i, j in pairs:
            ri, rj = find(i), find(j)
            parent[max(ri, rj)] = min(ri, rj)
        return [find(i) for i in range(n)]

    rng = random.Random(5)
    for n in (1, 7, 200):
        pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(n // 2)]
        pairs += [(k, k + 1) for k in range(n // 3, n // 3 + n // 4)] + pairs[:3]
        assert dedup.duplicate_clusters(n, pairs).tolist() == union_find(n, pairs)
        assert dedup.duplicate_clusters(n, np.array(pairs, np.int64)).tolist() == union_find(n, pairs)
    assert dedup.duplicate_clusters(4, []).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        dedup.duplicate_clusters(4, [(0, 4)])
