"""Issue 16 (data, pathclip-nano v2): oral mucosa beside colon, on small fixtures (and the real data when present)."""
import io
import json
import random
import re

import pytest

from conftest import textured
from pathvlm.data.build import build_recipe
from pathvlm.data.config import load_recipe
from pathvlm.data.knowledge import KnowledgeBase
from pathvlm.zeroshot import load_prompt_set

ORAL = ["normal oral mucosa", "oral squamous cell carcinoma"]
COLON = ["colon adenocarcinoma", "benign colonic tissue"]


def write_oral_fixture(tmp_path):
    """An oral_scc-like imagefolder: Normal/ and OSCC/ at 100x and 400x, a manifest with magnification, one image
    filed under both labels (label conflict) and one exact copy under the same label."""
    root = tmp_path / "oral"
    rows = ["path,label,magnification,sha256"]
    n = 0
    for label in ("Normal", "OSCC"):
        (root / label).mkdir(parents=True)
        for power in ("100x", "400x"):
            for k in range(6):
                name = f"{label}/{label}_{power}_{k}.jpg"
                textured(100 + n).save(root / name)
                rows.append(f"{name},{label},{power},")
                n += 1
    (root / "OSCC" / "OSCC_400x_90.jpg").write_bytes((root / "Normal" / "Normal_400x_0.jpg").read_bytes())
    rows.append("OSCC/OSCC_400x_90.jpg,OSCC,400x,")  # the same bytes as a Normal tile: which label is true?
    (root / "Normal" / "Normal_100x_90.jpg").write_bytes((root / "Normal" / "Normal_100x_1.jpg").read_bytes())
    rows.append("Normal/Normal_100x_90.jpg,Normal,100x,")  # an exact copy, same label
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "r.yaml").write_text("""
name: oral_fixture
sources:
  - name: oral
    adapter: imagefolder
    root: ${RECIPE_DIR}/oral
    options: {manifest: manifest.csv}
    label_map: {Normal: normal oral mucosa, OSCC: oral squamous cell carcinoma}
curation: {image_near_duplicate_bits: 4, drop_label_conflicts: true}
builders: [clip, align, sft, grpo]
""")
    return tmp_path / "r.yaml"


def _all(out, dataset):
    from pathvlm.data.inspect import load_split

    rows = []
    for split in ("train", "val", "test"):
        try:
            rows += list(load_split(out, dataset, split))
        except Exception:  # a split with no rows has no file
            pass
    return rows


def test_oral_build_drops_label_conflicts_and_writes_magnification_text(tmp_path):
    card = build_recipe(load_recipe(write_oral_fixture(tmp_path)), tmp_path / "out", progress=False)
    lc = card["label_conflicts"]
    assert lc["images"] == 1 and lc["rows_dropped"] == 2
    assert any("Normal_400x_0" in e for e in lc["examples"]) and any("OSCC_400x_90" in e for e in lc["examples"])
    assert card["duplicates"]["exact_rows"] == 1 and card["leakage_audit"]["ok"]
    assert sum(card["splits"]["rows"].values()) == 24 - 1  # 24 tiles, the conflicting one gone, the copy dropped
    assert "Label conflicts" in (tmp_path / "out" / "data_card.md").read_text()
    kb = KnowledgeBase.load()
    align = _all(tmp_path / "out", "align")
    reports = [r for r in align if r["task"] == "report"]
    assert reports and all(r["target"].startswith("Specimen: oral mucosa, H&E-stained section (") for r in reports)
    for power, word in (("100x", "Low power"), ("400x", "High power")):
        assert any(f"({power})" in r["target"] and word in r["target"] for r in reports)
    # captions come from the tile's magnification: the 100x and 400x description pools are disjoint
    clip = _all(tmp_path / "out", "clip")
    for label in ORAL:
        low = kb.entry(label)["magnifications"]["100x"]["descriptions"]
        high = kb.entry(label)["magnifications"]["400x"]["descriptions"]
        texts = [r["text"].lower() for r in clip if r["label"] == label]
        assert any(any(d.lower() in t for d in low) for t in texts) and any(any(d.lower() in t for d in high) for t in texts)
        assert not any(d.lower() in t for t in texts for d in kb.entry(label)["descriptions"])
    # the reasoning, answers and reports name the organ
    sft = _all(tmp_path / "out", "sft")
    assert {r["task"] for r in sft} == {"yes_no", "mcq", "open", "report"}
    for r in sft:
        think = re.search(r"<think>(.*)</think>", r["messages"][1]["content"][0]["text"], re.S).group(1)
        assert "power" in think  # magnification-specific observations
    opens = [r["messages"][1]["content"][0]["text"] for r in sft if r["task"] == "open"]
    assert all(re.search(r"<answer>[^<]*oral[^<]*</answer>", t) for t in opens)


def test_knowledge_base_subset_keeps_a_recipes_questions_to_its_own_classes():
    kb = KnowledgeBase.load()
    assert set(ORAL + COLON) <= set(kb.classes)
    v1 = kb.subset(COLON + ["high-grade serous carcinoma", "ovarian stroma", "inflammatory infiltrate", "not a class"])
    assert list(v1.classes) == COLON + ["high-grade serous carcinoma", "ovarian stroma", "inflammatory infiltrate"]
    assert list(kb.subset([]).classes) == list(kb.classes)  # caption-only builds keep every class


def test_colon_fixture_build_asks_only_about_its_own_classes(recipe_dir):
    build_recipe(load_recipe(recipe_dir / "recipe.yaml"), recipe_dir / "out", progress=False)
    text = json.dumps([r["prompt"] for r in _all(recipe_dir / "out", "grpo")])
    assert "oral" not in text and "colon adenocarcinoma" in text


def test_multiple_choice_never_offers_a_second_right_answer():
    kb = KnowledgeBase.load()
    for seed in range(200):
        options, correct = kb.options("oral squamous cell carcinoma", random.Random(seed))
        assert options[correct] == "oral squamous cell carcinoma" and len(set(options)) == 4
        assert "squamous cell carcinoma" not in options
    # the colon classes keep their distractors (nano.yaml's output does not change)
    pool = {o for s in range(200) for o in kb.subset(COLON).options("colon adenocarcinoma", random.Random(s))[0]}
    assert "squamous cell carcinoma" in pool


def test_reports_without_magnification_are_unchanged():
    kb = KnowledgeBase.load()
    assert kb.report("colon adenocarcinoma").startswith("Specimen: colon, H&E-stained section.\n")
    assert kb.report("colon adenocarcinoma", "400x") == kb.report("colon adenocarcinoma")  # no 400x text: general
    assert "(100x)" in kb.report("normal oral mucosa", "100x")
    assert kb.observations("normal oral mucosa", "40x") == " ".join(kb.entry("normal oral mucosa")["observations"])


def test_prompt_sets_for_two_organs():
    kb = KnowledgeBase.load()
    four = load_prompt_set("colon_oral")
    assert sorted(four.classes) == sorted(COLON + ORAL) and set(four.classes) <= set(kb.classes)
    assert four.class_of("OSCC") == "oral squamous cell carcinoma" and four.class_of("ovarian stroma") is None
    cross = load_prompt_set("cross_organ_carcinoma")
    assert [cross.class_of(c) for c in COLON + ORAL] == ["adenocarcinoma", "benign tissue", "benign tissue",
                                                          "squamous cell carcinoma"]
    assert not any(w in s for syns in cross.classes.values() for s in syns for w in ("colon", "oral", "mouth"))
    # unseen names: no content word of the knowledge base's caption material
    unseen = load_prompt_set("colon_oral_unseen_names")
    assert sorted(unseen.classes) == sorted(four.classes)
    caption_words = set(re.findall(r"[a-z]+", " ".join(kb.templates).lower()))
    for c in kb.classes.values():
        text = json.dumps([c["synonyms"], c["descriptions"], c["organ"], c.get("magnifications", {})]).lower()
        caption_words |= set(re.findall(r"[a-z]+", text))
    names = {w for syns in unseen.classes.values() for s in syns for w in re.findall(r"[a-z]+", s.lower())}
    assert names & caption_words <= {"of", "the", "a"}


def test_training_eval_scores_folded_labels_and_skips_the_rest(tiny_clip):
    from train.clip.evaluate import zero_shot

    model, preprocess, tok = tiny_clip
    labels = COLON + ORAL + ["ovarian stroma"]  # the last is in no class of the cross-organ task
    rows = []
    for i, label in enumerate(labels):
        buf = io.BytesIO()
        textured(i).save(buf, format="PNG")
        rows.append({"id": f"t{i}-c0", "image": buf.getvalue(), "label": label})
    out = zero_shot(model, tok, preprocess, rows, "cross_organ_carcinoma")
    assert out["n"] == 4 and 0.0 <= out["balanced_accuracy"] <= 1.0
    assert zero_shot(model, tok, preprocess, rows, "lc25000_colon")["n"] == 2
    # evaluate() embeds the split once for every task: the same figures as each task embedding it alone
    from train.clip.evaluate import evaluate, retrieval

    rows = [{**r, "text": f"caption {i}"} for i, r in enumerate(rows)]
    m = evaluate(model, tok, preprocess, rows, "colon_oral", extra_tasks=["cross_organ_carcinoma"])
    alone = zero_shot(model, tok, preprocess, rows, "cross_organ_carcinoma")
    assert m["zeroshot[cross_organ_carcinoma]/accuracy"] == pytest.approx(alone["accuracy"])
    assert m["retrieval/t2i_R@1"] == pytest.approx(retrieval(model, tok, preprocess, rows)["t2i_R@1"])


def test_v2_recipes_parse(tmp_path):
    from train.clip.config import load_config

    recipe = load_recipe("data_recipes/nano_v2.yaml", {"SHARED": str(tmp_path)})
    assert [s.name for s in recipe.sources] == ["lc25000_colon", "oral_scc", "histolytics_hgsc"]
    assert recipe.curation.drop_label_conflicts and recipe.curation.image_near_duplicate_bits == 9
    assert recipe.sources[1].label_map == {"Normal": "normal oral mucosa", "OSCC": "oral squamous cell carcinoma"}
    nano = load_recipe("data_recipes/nano.yaml", {"SHARED": str(tmp_path)})
    assert not nano.curation.drop_label_conflicts and nano.curation.image_near_duplicate_bits == 4
    cfg = load_config("train/recipes/clip/pathclip_nano_v2.yaml")
    assert cfg.model == "pathclip-nano-untrained" and cfg.data == "runs/data/nano_v2"
    assert cfg.eval_task == "colon_oral" and "cross_organ_carcinoma" in cfg.eval_extra_tasks
    for task in [cfg.eval_task, cfg.eval_unseen_task, *cfg.eval_extra_tasks]:
        load_prompt_set(task)


def test_bundle_card_table_keeps_v1_columns_and_shows_v2_tasks():
    from train.clip.bundle import results_table, table_columns

    v1 = {"eval_task": "lc25000_colon", "eval_extra_tasks": ["lc25000_colon_unseen_names"]}
    assert [h for h, _ in table_columns(v1)][:2] == ["zero-shot balanced acc.",
                                                     "same, class names never in training captions"]
    v2 = {"eval_task": "colon_oral", "eval_extra_tasks": ["lc25000_colon", "cross_organ_carcinoma"]}
    m = {"zeroshot/balanced_accuracy": 0.9, "zeroshot[cross_organ_carcinoma]/balanced_accuracy": 0.8}
    table = results_table({"a": m}, v2)
    assert "`colon_oral` balanced acc." in table and "| `a` | 0.900 | nan | 0.800 |" in table


@pytest.mark.shared
def test_nano_v2_recipe_on_shared_data(tmp_path):
    from pathvlm.cli import main

    assert main(["data", "build", "data_recipes/nano_v2.yaml", "--out", str(tmp_path / "v2"), "--no-progress"]) == 0
    card = json.loads((tmp_path / "v2" / "data_card.json").read_text())
    assert card["leakage_audit"]["ok"] and card["sources"]["oral_scc"]["records"] == 975
    assert card["label_conflicts"]["images"] == 12
    assert set(card["outputs"]) == {"clip", "align", "sft", "grpo"}


def test_bundle_evaluates_the_shipped_weights_beside_a_rebuild(monkeypatch):
    import train.clip.bundle as bundle

    calls = []
    monkeypatch.setattr("pathvlm.clip.factory.create_clip", lambda n: calls.append(("shipped", n)) or (None, None, None))
    monkeypatch.setattr(bundle, "create_bundled", lambda n, w: calls.append(("rebuilt", n, w)) or (None, None, None))
    monkeypatch.setattr("train.clip.evaluate.evaluate", lambda *a, **k: {"n": 1})
    monkeypatch.setattr("train.clip.data.read_rows", lambda *a, **k: [])
    out = bundle.compare(["pathclip-nano" + bundle.SHIPPED, "pathclip-nano"], "d", "test", [], "t", "u", weights_dir="w")
    assert calls == [("shipped", "pathclip-nano"), ("rebuilt", "pathclip-nano", "w")]
    assert list(out) == ["pathclip-nano (shipped)", "pathclip-nano"]
