"""The evaluation harness end to end on tiny models and fixtures in the datasets' real layouts."""
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from evals.runner import run_eval
from evals.tasks import list_tasks, load_task
from pathvlm.cli import main
from pathvlm.errors import PathVLMError


def test_shipped_tasks_load():
    names = list_tasks()
    assert {"lc25000_colon_zeroshot", "hgsc_tissue_zeroshot", "lc25000_colon_linear_probe", "lc25000_colon_few_shot",
            "lc25000_colon_retrieval", "lc25000_colon_stain_robustness", "crc100k_zeroshot", "bach_zeroshot",
            "lc25000_lung_zeroshot"} <= set(names)
    for n in names:
        t = load_task(n)
        assert t.description and t.source


@pytest.fixture()
def fixture_tasks(recipe_dir, tmp_path):
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    recipe.splits.ratios = {"train": 0.6, "test": 0.4}
    build_recipe(recipe, recipe_dir / "data", progress=False)
    dataset = {"kind": "built", "build_dir": str(recipe_dir / "data"), "dataset": "clip", "split": "test"}
    paths = []
    for name, kind, extra in [("zs", "zeroshot", {"prompts": "lc25000_colon"}), ("lp", "linear_probe", {}),
                              ("fs", "few_shot", {"shots": [1, 2], "seeds": [0, 1]}), ("rt", "retrieval", {}),
                              ("st", "stain_robustness", {"prompts": "lc25000_colon", "settings": {"k": 2}})]:
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"name": name, "kind": kind, "dataset": dataset, "description": "d", "source": "s",
                                     **extra}))
        paths.append(str(p))
    return paths


def test_every_kind_runs_writes_a_report_and_repeats_exactly(tiny_clip_dir, fixture_tasks, tmp_path):
    a = run_eval(str(tiny_clip_dir), fixture_tasks, tmp_path / "a")
    run_eval(str(tiny_clip_dir), fixture_tasks, tmp_path / "b")
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    tasks = a["tasks"]
    assert set(tasks) == {"zs", "lp", "fs", "rt", "st"}
    zs = tasks["zs"]["metrics"]
    assert 0 <= zs["ensemble"]["balanced_accuracy"] <= 1 and "single_prompt" in zs and "ece" in zs["ensemble"]
    assert sum(map(sum, zs["confusion"]["matrix"])) == tasks["zs"]["n_samples"]
    assert set(tasks["fs"]["metrics"]) == {"1-shot", "2-shot"}
    assert "t2i_R@5" in tasks["rt"]["metrics"] and "robustness_index" in tasks["st"]["metrics"]
    report = (tmp_path / "a" / "report.md").read_text()
    assert "## zs (zeroshot)" in report and "2-shot / balanced_accuracy_mean" in report
    assert (tmp_path / "a" / "plots" / "zs_confusion.png").stat().st_size > 1000
    assert a["fingerprint"] and len(tasks["zs"]["data_sha256"]) == 64


def test_pinned_data_hash_is_enforced(tiny_clip_dir, fixture_tasks, tmp_path):
    spec = yaml.safe_load(open(fixture_tasks[0]))
    spec["expected_data_sha256"] = "0" * 64
    p = tmp_path / "pinned.yaml"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(PathVLMError, match="differs from the pinned data"):
        run_eval(str(tiny_clip_dir), [str(p)], tmp_path / "out")


def test_crc100k_task_on_a_fixture_in_the_zenodo_layout(tiny_clip_dir, tmp_path, monkeypatch):
    root = tmp_path / "crc" / "CRC-VAL-HE-7K"
    rng = np.random.default_rng(0)
    for code in ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"):
        (root / code).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(root / code / f"{code}-{i}.tif")
    monkeypatch.setenv("CRC100K", str(tmp_path / "crc"))
    res = run_eval(str(tiny_clip_dir), ["crc100k_zeroshot"], tmp_path / "out")
    m = res["tasks"]["crc100k_zeroshot"]
    assert m["n_samples"] == 18 and len(m["metrics"]["confusion"]["classes"]) == 9


def test_missing_public_data_says_where_to_get_it(tiny_clip_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BACH", str(tmp_path / "nope"))
    with pytest.raises(PathVLMError, match="dataset not found .*ICIAR2018"):
        run_eval(str(tiny_clip_dir), ["bach_zeroshot"], tmp_path / "out")


def test_cli_lists_and_runs(tiny_clip_dir, fixture_tasks, tmp_path, capsys):
    assert main(["eval", "--list"]) == 0
    assert "lc25000_colon_zeroshot" in capsys.readouterr().out
    assert main(["eval", "--model", str(tiny_clip_dir), "--tasks", fixture_tasks[0], "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "results.json").read_text())["tasks"]["zs"]["kind"] == "zeroshot"
    assert main(["eval", "--tasks", "nope"]) == 2


@pytest.mark.shared
def test_bundled_model_on_lc25000_tasks(tmp_path):
    res = run_eval("pathclip-nano", ["lc25000_colon_zeroshot"], tmp_path / "out")
    assert res["tasks"]["lc25000_colon_zeroshot"]["metrics"]["ensemble"]["balanced_accuracy"] > 0.9


def test_lc25000_lung_task_on_a_fixture_in_the_published_layout(tiny_clip_dir, tmp_path, monkeypatch):
    root = tmp_path / "lc" / "lung_colon_image_set" / "lung_image_sets"
    rng = np.random.default_rng(1)
    for label in ("lung_aca", "lung_scc", "lung_n"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / label / f"{label}{i}.jpeg")
    monkeypatch.setenv("LC25000", str(tmp_path / "lc"))
    res = run_eval(str(tiny_clip_dir), ["lc25000_lung_zeroshot"], tmp_path / "out")
    assert res["tasks"]["lc25000_lung_zeroshot"]["n_samples"] == 6
    assert len(res["tasks"]["lc25000_lung_zeroshot"]["metrics"]["confusion"]["classes"]) == 3
