"""Recipes end to end on fixtures: malformed rows, dedup, splits and audit, outputs, reruns."""
import json
import re

import pytest

from pathvlm.cli import main
from pathvlm.data import writer
from pathvlm.data.build import build_recipe
from pathvlm.data.config import load_recipe
from pathvlm.data.splits import LeakageError
from conftest import textured
from pathvlm.errors import PathVLMError


def test_build_counts_skips_and_deduplicates(recipe_dir):
    recipe = load_recipe(recipe_dir / "recipe.yaml")
    card = build_recipe(recipe, recipe_dir / "out", progress=False)
    assert card["malformed"]["counts"] == {"tiles: missing image": 1, "tiles: unreadable image": 1}
    assert card["duplicates"]["exact_rows"] == 1
    assert card["duplicates"]["near_duplicate_image_pairs"] >= 1
    assert card["duplicates"]["groups_merged_by_image_similarity"] >= 1
    assert card["leakage_audit"]["ok"] and card["leakage_audit"]["shared_groups"] == 0
    assert sum(card["splits"]["rows"].values()) == 21  # 20 tiles + the near-duplicate
    for f in ("data_card.md", "data_card.json", "checksums.json"):
        assert (recipe_dir / "out" / f).exists()
    md = (recipe_dir / "out" / "data_card.md").read_text()
    assert "**PASS**" in md and "tiles: unreadable image: 1" in md


def test_outputs_are_hf_datasets_in_the_right_formats(recipe_dir):
    from pathvlm.data.inspect import load_split

    build_recipe(load_recipe(recipe_dir / "recipe.yaml"), recipe_dir / "out", progress=False)
    sft = load_split(recipe_dir / "out", "sft", "train")
    assert set(sft.unique("task")) == {"yes_no", "mcq", "open", "report"}
    pattern = re.compile(r"^<think>.+</think><answer>.+</answer>$", re.S)
    for row in sft:
        assert row["messages"][0]["role"] == "user" and row["messages"][0]["content"][0]["type"] == "image"
        assert pattern.match(row["messages"][1]["content"][0]["text"])
        assert row["images"][0].size == (96, 96)
    grpo = load_split(recipe_dir / "out", "grpo", "train")
    for row in grpo:
        if row["answer_type"] == "option_letter":
            assert row["options"]["ABCD".index(row["answer"])] == row["label"]
        elif row["answer_type"] == "yes_no":
            asked = re.match(r"Is this (.+)\? Answer", row["prompt"][0]["content"][1]["text"]).group(1)
            assert row["answer"] == ("yes" if asked == row["label"] else "no")
    clip = load_split(recipe_dir / "out", "clip", "train")
    assert all(r["text"] and r["image"] is not None for r in clip)
    streamed = list(load_split(recipe_dir / "out", "clip", "train", streaming=True))
    assert [r["id"] for r in streamed] == clip["id"]
    # every row of one group is in one split
    seen = {}
    for split in ("train", "val", "test"):
        for g in load_split(recipe_dir / "out", "clip", split)["group"]:
            assert seen.setdefault(g, split) == split


def test_rerun_and_interrupted_rerun_are_identical(recipe_dir, monkeypatch):
    recipe = load_recipe(recipe_dir / "recipe.yaml")
    first = build_recipe(recipe, recipe_dir / "a", progress=False)["checksums"]
    assert build_recipe(recipe, recipe_dir / "a", progress=False)["checksums"] == first
    real = writer._write_shard
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "_write_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        build_recipe(recipe, recipe_dir / "b", progress=False)
    assert not (recipe_dir / "b").exists()  # nothing half-written where a result is expected
    monkeypatch.setattr(writer, "_write_shard", real)
    assert build_recipe(recipe, recipe_dir / "b", progress=False)["checksums"] == first


def test_planted_leak_fails_the_build(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        textured(1).save(tmp_path / "images" / split / f"{split}_0001.jpg")  # the same image in both splits
        (tmp_path / f"pvqa_{split}.json").write_text(json.dumps([
            {"img_id": f"{split}_0001", "labelf": {"pvqa": [{"yes": 1}]}, "sentf": {"pvqa": [f"Is it {split}?"]}}]))
    (tmp_path / "r.yaml").write_text("""
name: leak
sources:
  - {name: tr, adapter: pathvqa, root: "${RECIPE_DIR}", options: {split: train}}
  - {name: va, adapter: pathvqa, root: "${RECIPE_DIR}", options: {split: val}}
splits: {use_source_splits: true}
builders: [sft]
""")
    with pytest.raises(LeakageError, match="1 shared images"):
        build_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_recipe_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\nsources:\n  - {name: a, adapter: arch, root: \"${NOPE}\"}\n")
    with pytest.raises(PathVLMError, match=r"\$\{NOPE\} but it is not set"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("name: x\nsources: []\ncuration: {bogus: 1}\n")
    with pytest.raises(PathVLMError, match="unknown field"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("name: x\nsources: []\nbuilders: [nope]\n")
    with pytest.raises(PathVLMError, match="unknown builder"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(PathVLMError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_cli_build_show_and_plot(recipe_dir, capsys):
    assert main(["data", "build", str(recipe_dir / "recipe.yaml"), "--out", str(recipe_dir / "o")]) == 0
    assert "Leakage audit" in capsys.readouterr().out
    assert main(["data", "show", str(recipe_dir / "o"), "--dataset", "sft", "-n", "2",
                 "--plot", str(recipe_dir / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "<think>" in out and (recipe_dir / "s.png").stat().st_size > 1000
    assert main(["data", "sources"]) == 0 and "pathvqa" in capsys.readouterr().out


@pytest.mark.shared
def test_nano_recipe_on_shared_lc25000(tmp_path, capsys):
    assert main(["data", "build", "data_recipes/nano.yaml", "--out", str(tmp_path / "nano")]) == 0
    card = json.loads((tmp_path / "nano" / "data_card.json").read_text())
    assert card["leakage_audit"]["ok"] and card["leakage_audit"]["shared_groups"] == 0
    assert card["sources"]["lc25000_colon"]["records"] == 2000
    assert set(card["outputs"]) == {"clip", "align", "sft", "grpo"}


@pytest.mark.shared
def test_text_recipe_reports_the_visual_filter(tmp_path):
    assert main(["data", "build", "data_recipes/text_arch_pathgen.yaml", "--out", str(tmp_path / "t")]) == 0
    card = json.loads((tmp_path / "t" / "data_card.json").read_text())
    vf = card["visual_filter"]
    assert vf["sentences_kept"] > 10000 and vf["sentences_removed"] > 1000 and vf["examples"]["removed"]
    assert "Visual-sentence filter" in (tmp_path / "t" / "data_card.md").read_text()


@pytest.mark.parametrize("chunk", [1, 3])
def test_build_in_small_chunks_writes_the_same_bytes(recipe_dir, monkeypatch, chunk):
    """Rows stream through the build in chunks (reading, images, captions) into the on-disk spill; duplicates and
    near-duplicates that fall in different chunks must come out exactly as from one chunk, and the spill must go."""
    from pathvlm.data import build

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    whole = build_recipe(recipe, recipe_dir / "whole", progress=False)
    sizes = []
    real = build._chunks

    def counted(rows, size):
        for c in real(rows, size):
            sizes.append(len(c))
            yield c

    monkeypatch.setattr(build, "CHUNK_ROWS", chunk)
    monkeypatch.setattr(build, "_chunks", counted)
    chunked = build_recipe(recipe, recipe_dir / "chunked", progress=False)
    assert max(sizes) == chunk and len(sizes) >= 8
    assert chunked["checksums"] == whole["checksums"]
    assert json.loads((recipe_dir / "chunked" / "data_card.json").read_text()) == \
        json.loads((recipe_dir / "whole" / "data_card.json").read_text())
    assert sorted(p.name for p in recipe_dir.iterdir() if p.name.startswith(".")) == []  # no spill left behind


def test_build_whose_every_row_is_dropped_writes_an_empty_set_and_says_why(tmp_path):
    tiles = tmp_path / "tiles" / "colon_n"
    tiles.mkdir(parents=True)
    (tiles / "broken.png").write_text("not an image")
    (tmp_path / "tiles" / "manifest.csv").write_text("path,label,group,sha256\ncolon_n/broken.png,colon_n,g0,\n")
    (tmp_path / "r.yaml").write_text("""
name: empty
sources:
  - {name: tiles, adapter: imagefolder, root: "${RECIPE_DIR}/tiles", options: {manifest: manifest.csv}}
builders: [clip, sft]
""")
    card = build_recipe(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", progress=False)
    assert card["outputs"] == {"clip": {}, "sft": {}}
    assert card["malformed"]["counts"] == {"tiles: unreadable image": 1}
    assert card["splits"]["rows"] == {} and card["leakage_audit"]["ok"]


def test_an_image_kept_as_is_is_written_without_decoding_and_checked(tmp_path, monkeypatch):
    import hashlib

    from pathvlm.data import build

    path = tmp_path / "t.jpg"
    textured(3).save(path, format="JPEG")
    digest, _, _, as_is = build._load_one((str(path), None, 1024, None))
    assert as_is and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    ref = build.ImageRef(digest, path=str(path), as_is=True)
    monkeypatch.setattr(build, "encode_image", lambda *a, **k: pytest.fail("decoded again"))
    assert ref.read() == path.read_bytes()
    textured(4).save(path, format="JPEG")  # the file changes between loading and writing
    with pytest.raises(PathVLMError, match="changed while the build ran"):
        ref.read()
    monkeypatch.undo()
    big = tmp_path / "big.png"
    textured(5).resize((300, 300)).save(big)
    assert build._load_one((str(big), None, 128, None))[3] is False  # downscaled: stored bytes are not the file's
