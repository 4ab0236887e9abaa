"""Field zero-shot tasks (PatchCamelyon, SICAPv2, SkinCancer) on tiny fixtures written in each dataset's
published layout, and the HTML report."""
import csv

import numpy as np
import pytest
from PIL import Image

from evals.runner import run_eval
from evals.tasks import load_task
from pathvlm.data.sources import Malformed, get_adapter, list_adapters
from pathvlm.errors import PathVLMError
from pathvlm.zeroshot import load_prompt_set


def write_pcam(folder, n=6, seed=0):
    """camelyonpatch_level_2_split_test_{x,y}.h5 as on Zenodo (after gunzip), plus the meta csv."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.array([i % 2 for i in range(n)], dtype=np.uint8).reshape(n, 1, 1, 1)
    with h5py.File(folder / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=rng.integers(0, 255, (n, 96, 96, 3), dtype=np.uint8))
    with h5py.File(folder / "camelyonpatch_level_2_split_test_y.h5", "w") as f:
        f.create_dataset("y", data=labels)
    with open(folder / "camelyonpatch_level_2_split_test_meta.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi"])
        for i in range(n):
            w.writerow([i, i, bool(labels[i, 0, 0, 0]), bool(labels[i, 0, 0, 0]), f"test_{i // 3:03d}"])
    return labels.ravel()


def test_pcam_adapter_reads_the_h5_layout(tmp_path):
    labels = write_pcam(tmp_path / "pcam")
    recs = list(get_adapter("pcam").read(tmp_path / "pcam", split="test"))
    assert [r.label for r in recs] == [str(v) for v in labels]
    assert recs[0].group == "pcam-test_000" and recs[3].group == "pcam-test_001"
    assert Image.open(__import__("io").BytesIO(recs[0].image_bytes)).size == (96, 96)
    assert len(list(get_adapter("pcam").read(tmp_path / "pcam", limit=2))) == 2


def test_pcam_refuses_gzipped_files(tmp_path):
    (tmp_path / "camelyonpatch_level_2_split_test_x.h5.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(PathVLMError, match="gunzip"):
        list(get_adapter("pcam").read(tmp_path))


def test_pcam_task_on_a_fixture(tiny_clip_dir, tmp_path, monkeypatch):
    write_pcam(tmp_path / "pcam")
    monkeypatch.setenv("PCAM", str(tmp_path / "pcam"))
    res = run_eval(str(tiny_clip_dir), ["pcam_zeroshot"], tmp_path / "out")
    t = res["tasks"]["pcam_zeroshot"]
    assert t["n_samples"] == 6 and t["metrics"]["confusion"]["classes"] == list(load_prompt_set("pcam").classes)
    assert sum(map(sum, t["metrics"]["confusion"]["matrix"])) == 6


def write_sicap(root, seed=0):
    """SICAPv2: images/<name>.jpg and partition/Test/Test.xlsx (image_name + NC/G3/G4/G5/G4C one-hot)."""
    openpyxl = pytest.importorskip("openpyxl")
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "partition" / "Test").mkdir(parents=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["image_name", "NC", "G3", "G4", "G5", "G4C"])
    names = []
    for i, label in enumerate(["NC", "G3", "G4", "G5", "G4", "NC"]):
        name = f"16B000{i // 2}851_Block_Region_1_0_{i}_xini_6803_yini_59786.jpg"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / name)
        ws.append([name] + [int(c == label) for c in ("NC", "G3", "G4", "G5")] + [0])
        names.append((name, label))
    ws.append(["broken.jpg", 1, 1, 0, 0, 0])  # two grades set: malformed
    wb.save(root / "partition" / "Test" / "Test.xlsx")
    return names


def test_sicapv2_adapter_reads_the_partition_sheet(tmp_path):
    names = write_sicap(tmp_path / "SICAPv2")
    recs = list(get_adapter("sicapv2").read(tmp_path / "SICAPv2"))
    good = [r for r in recs if not isinstance(r, Malformed)]
    assert [r.label for r in good] == [lab for _, lab in names]
    assert sum(isinstance(r, Malformed) for r in recs) == 1
    assert good[0].group == good[1].group == "sicapv2-16B0000851" != good[2].group


def test_sicapv2_task_on_a_fixture(tiny_clip_dir, tmp_path, monkeypatch):
    write_sicap(tmp_path / "SICAPv2")
    monkeypatch.setenv("SICAPV2", str(tmp_path / "SICAPv2"))
    res = run_eval(str(tiny_clip_dir), ["sicapv2_zeroshot"], tmp_path / "out")
    t = res["tasks"]["sicapv2_zeroshot"]
    assert t["n_samples"] == 6 and len(t["metrics"]["confusion"]["classes"]) == 4


SKIN_CLASSES = ["nontumor_skin_dermis_dermis", "tumor_skin_epithelial_bcc", "tumor_skin_naevus_naevus"]


def write_skin(root, seed=0):
    """Kriegsmann et al. skin tiles: data/tiles-v2.csv (file, class, set, malignicy) + data/tiles/<class>/."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in SKIN_CLASSES:
        (root / "data" / "tiles" / c).mkdir(parents=True)
        for ws, n, split in [(44, 1, "Test"), (44, 5, "Test"), (7, 2, "Train")]:
            rel = f"data/tiles/{c}/{c}_ws_{ws}_{n}.jpg"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / rel)
            rows.append({"file": rel, "class": c, "set": split, "malignicy": c.split("_")[0]})
    with open(root / "data" / "tiles-v2.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "class", "set", "malignicy"])
        w.writeheader()
        w.writerows(rows)


def test_skincancer_adapter_reads_tiles_v2(tmp_path):
    write_skin(tmp_path / "skin")
    recs = list(get_adapter("skincancer").read(tmp_path / "skin", split="Test"))
    assert len(recs) == 6 and {r.label for r in recs} == set(SKIN_CLASSES)
    assert recs[0].group == "skin-ws_44" and all(__import__("os").path.exists(r.image_path) for r in recs)
    assert len(list(get_adapter("skincancer").read(tmp_path / "skin", split="Train"))) == 3


def test_skincancer_task_on_a_fixture_writes_html(tiny_clip_dir, tmp_path, monkeypatch):
    write_skin(tmp_path / "skin")
    monkeypatch.setenv("SKINCANCER", str(tmp_path / "skin"))
    res = run_eval(str(tiny_clip_dir), ["skincancer_zeroshot"], tmp_path / "out")
    t = res["tasks"]["skincancer_zeroshot"]
    assert t["n_samples"] == 6 and len(t["metrics"]["confusion"]["classes"]) == 16
    page = (tmp_path / "out" / "report.html").read_text()
    assert "skincancer_zeroshot" in page and page.count("data:image/png;base64,") == 2  # confusion + reliability


def test_every_class_the_task_maps_to_is_in_its_prompt_set():
    for name in ("pcam_zeroshot", "sicapv2_zeroshot", "skincancer_zeroshot"):
        t = load_task(name)
        assert set(t.dataset["label_map"].values()) == set(load_prompt_set(t.prompts).classes), name
        assert "http" in t.description + t.source and t.dataset["adapter"] in list_adapters()


def test_missing_data_can_be_skipped(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("PCAM", raising=False)
    with pytest.raises(PathVLMError, match="zenodo.org/records/2546921"):
        run_eval(str(tiny_clip_dir), ["pcam_zeroshot"], tmp_path / "a")
    res = run_eval(str(tiny_clip_dir), ["pcam_zeroshot"], tmp_path / "b", skip_missing=True)
    assert "zenodo" in res["tasks"]["pcam_zeroshot"]["skipped"]
    assert "skipped" in (tmp_path / "b" / "report.md").read_text()
