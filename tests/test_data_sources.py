"""Each source adapter on a small fixture in the source's real published layout."""
import csv
import json

import pytest

from conftest import he_like_tile
from pathvlm.data.sources import Malformed, get_adapter
from pathvlm.errors import PathVLMError


def read(name, root=None, **opts):
    items = list(get_adapter(name).read(root, **opts) if root is not None else get_adapter(name).read(**opts))
    return [i for i in items if not isinstance(i, Malformed)], [i for i in items if isinstance(i, Malformed)]


def test_arch_books_and_pubmed_layout(tmp_path):
    (tmp_path / "books_set" / "images").mkdir(parents=True)
    (tmp_path / "pubmed_set" / "images").mkdir(parents=True)
    (tmp_path / "books_set" / "captions.json").write_text(json.dumps({
        "0": {"figure_id": "00", "letter": "A", "caption": "A, Spindle cells.", "uuid": "u1"},
        "1": {"figure_id": "00", "letter": "B", "caption": "B, Spindle cells.", "uuid": "u2"},
        "2": "not an object"}))
    (tmp_path / "pubmed_set" / "captions.json").write_text(json.dumps({"0": {"caption": "ER expression.", "uuid": "p1"}}))
    recs, bad = read("arch", tmp_path)
    assert [r.key for r in recs] == ["books-u1", "books-u2", "pubmed-p1"]
    assert recs[0].group == recs[1].group == "arch-books-00"  # sub-figures of one figure stay together
    assert recs[0].image_path.endswith("books_set/images/u1.png") and recs[2].image_path.endswith("pubmed_set/images/p1.jpg")
    assert len(bad) == 1 and bad[0].reason == "bad json row"
    recs, _ = read("arch", tmp_path, subset="pubmed")
    assert len(recs) == 1


def test_arch_missing_is_a_clear_error(tmp_path):
    with pytest.raises(PathVLMError, match="ARCH captions not found"):
        read("arch", tmp_path)


def test_quilt1m_lookup(tmp_path):
    with open(tmp_path / "quilt_1M_lookup.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "caption", "image_path", "subset", "split", "pathology", "roi_text", "noisy_text",
                    "corrected_text", "med_umls_ids", "magnification", "height", "width"])
        w.writerow([0, "glands lined by atypical cells", "abc_1.jpg", "quilt", "train", "['gi']", "", "", "", "", 10, 500, 500])
        w.writerow([1, "other", "", "openpath", "train", "", "", "", "", "", 0, 0, 0])
        w.writerow([2, "lymph node", "def_2.jpg", "openpath", "train", "", "", "", "", "", 0, 0, 0])
    recs, bad = read("quilt1m", tmp_path, subsets=["quilt"])
    assert [r.key for r in recs] == ["abc_1"] and recs[0].image_path.endswith("quilt_1m/abc_1.jpg")
    recs, bad = read("quilt1m", tmp_path)
    assert len(recs) == 2 and bad[0].reason == "missing image path"


def test_openpath_pmc_oa_and_pairs(tmp_path):
    (tmp_path / "openpath.csv").write_text("image,text,tweet_id\n1.jpg,Granuloma with giant cells,11\n")
    recs, _ = read("openpath", tmp_path, group_column="tweet_id")
    assert recs[0].group == "openpath-11" and recs[0].text == "Granuloma with giant cells"
    (tmp_path / "images").mkdir()
    (tmp_path / "train.jsonl").write_text(
        '{"image": "PMC123_F1.jpg", "caption": "Tumour nests."}\n{bad json\n'
        '{"image": "PMC123_F2.jpg", "caption": "Stroma."}\n')
    recs, bad = read("pmc_oa", tmp_path)
    assert [r.group for r in recs] == ["pmc-PMC123", "pmc-PMC123"] and bad[0].reason == "bad json line"
    (tmp_path / "pairs.tsv").write_text("img\tcap\na.png\tx y z\n")
    recs, _ = read("pairs", tmp_path, file="pairs.tsv", image_column="img", text_column="cap")
    assert recs[0].text == "x y z"


def test_pathgen_groups_by_patient(tmp_path):
    (tmp_path / "PathGen-1.6M.json").write_text(json.dumps([
        {"wsi_id": "TCGA-F7-A50J-01Z-00-DX1.D754", "position": ["21408", "27328"], "caption": "Pleomorphic cells."},
        {"wsi_id": "TCGA-F7-A50J-01Z-00-DX2.AAAA", "position": ["1", "2"], "caption": "Keratin pearls."},
        {"wsi_id": "", "position": [], "caption": "x"}]))
    recs, bad = read("pathgen", tmp_path)
    assert recs[0].group == recs[1].group == "tcga-TCGA-F7-A50J"
    assert recs[0].image_path.endswith("images/TCGA-F7-A50J-01Z-00-DX1.D754_21408_27328.png") and len(bad) == 1


def test_patchgastric_patches_and_text_only(tmp_path):
    (tmp_path / "captions.csv").write_text('id,subtype,text\ns1,Well differentiated tubular adenocarcinoma,"Large atypical ducts."\ns2,Poorly,"Solid."\n')
    recs, _ = read("patchgastric", tmp_path)
    assert [r.image_path for r in recs] == [None, None]
    (tmp_path / "patches_captions").mkdir()
    for name in ["s1_aa.jpg", "s1_bb.jpg", "s2_cc.jpg"]:
        he_like_tile(1).save(tmp_path / "patches_captions" / name)
    recs, _ = read("patchgastric", tmp_path)
    assert [r.group for r in recs] == ["gastric-s1", "gastric-s1", "gastric-s2"]
    assert recs[0].label == "Well differentiated tubular adenocarcinoma"


def test_pathvqa_layout(tmp_path):
    (tmp_path / "pvqa_val.json").write_text(json.dumps([
        {"img_id": "val_0000", "labelf": {"pvqa": []}, "sentf": {"pvqa": []}},
        {"img_id": "val_0001", "labelf": {"pvqa": [{"alveolar walls": 1}, {"yes": 1}]},
         "sentf": {"pvqa": ["What are lined by cells?", "Are the walls lined by cells?"]}},
        {"img_id": "val_0002", "labelf": {"pvqa": [{"yes": 1}]}, "sentf": {"pvqa": []}}]))
    recs, bad = read("pathvqa", tmp_path, split="val")
    assert [(r.task, r.answer) for r in recs] == [("vqa_open", "alveolar walls"), ("vqa_closed", "yes")]
    assert recs[0].group == recs[1].group == "pathvqa-val_0001"
    assert recs[0].image_path.endswith("images/val/val_0001.jpg")
    assert bad[0].reason == "questions and answers not aligned"


def test_pathmmu_layout(tmp_path):
    (tmp_path / "data.json").write_text(json.dumps({"Atlas": {"val": [
        {"question": "Which tissue?", "options": ["A) Skeletal muscle", "B) Liver"], "answer": "B) Liver",
         "explanation": "Hepatocytes in plates.", "source_img": "books_set/images/u1.png"},
        {"question": "?", "options": ["A) x"], "answer": "A) x", "img": "i.png"}]}}))
    recs, bad = read("pathmmu", tmp_path)
    assert recs[0].options == ["Skeletal muscle", "Liver"] and recs[0].answer == "B"
    assert recs[0].rationale == "Hepatocytes in plates." and len(bad) == 1


def test_quilt_vqa_layout(tmp_path):
    (tmp_path / "quiltvqa_test_w_ans.json").write_text(json.dumps([
        {"question_id": 1, "image": "a.jpg", "text": "Is there necrosis?", "answer": "Yes", "answer_type": "closed"},
        {"question_id": 2, "image": "b.jpg", "text": "What is seen?", "answer": "granulomas", "answer_type": "open"}]))
    recs, _ = read("quilt_vqa", tmp_path)
    assert [r.task for r in recs] == ["vqa_closed", "vqa_open"]


def test_imagefolder_with_and_without_manifest(tmp_path):
    for label in ("colon_aca", "colon_n"):
        (tmp_path / label).mkdir()
        for i in range(2):
            he_like_tile(i).save(tmp_path / label / f"{label}{i}.jpeg")
    recs, _ = read("imagefolder", tmp_path)
    assert sorted({r.label for r in recs}) == ["colon_aca", "colon_n"] and len(recs) == 4
    (tmp_path / "manifest.csv").write_text("path,label,group,sha256\ncolon_aca/colon_aca0.jpeg,colon_aca,g1,x\n,colon_n,g2,y\n")
    recs, bad = read("imagefolder", tmp_path, manifest="manifest.csv", label_map={"colon_aca": "colon adenocarcinoma"})
    assert recs[0].group == "g1" and recs[0].label == "colon adenocarcinoma" and len(bad) == 1


def test_histolytics_tiles_are_labelled_by_nuclei():
    from pathvlm.paths import package_dir

    if package_dir("histolytics") is None:
        pytest.skip("histolytics wheel not installed")
    recs, _ = read("histolytics_tiles", tile=224)
    labels = {r.label for r in recs}
    assert labels <= {"high-grade serous carcinoma", "ovarian stroma", "inflammatory infiltrate"} and len(labels) == 3
    assert all(max(r.meta["nuclei"].values()) / sum(r.meta["nuclei"].values()) >= 0.6 for r in recs)


def test_wkb_centroid():
    import struct

    from pathvlm.data.sources.classification import _wkb_centroid

    ring = [(0.0, 0.0), (4.0, 0.0), (4.0, 2.0), (0.0, 2.0), (0.0, 0.0)]
    blob = struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)
    assert _wkb_centroid(blob) == (2.0, 1.0)
    assert _wkb_centroid(b"\x01\x01\x00") is None


def test_unknown_adapter():
    with pytest.raises(PathVLMError, match="unknown source adapter"):
        get_adapter("nope")
