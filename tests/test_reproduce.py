"""make reproduce (train/reproduce.py) and the provenance the bundlers record (train/provenance.py).

The fast tests check the comparison, the report, the provenance and that a rebuilt bundle in a scratch folder is
what gets evaluated. The full rebuild is marked slow and runs only with PATHVLM_REPRODUCE=1 (15 min of CPU for
pathclip-nano-v1; PATHVLM_REPRODUCE=clip for pathclip-nano v4, about 30-40 min; =clip-v3 for pathclip-nano-v3, about 30 min; =clip-v2 for pathclip-nano-v2, about 30 min;
=vlm for pathvlm-nano v2, about 90 min; =vlm-v1, about 80 min; =all for the six)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from train import reproduce
from train.clip.bundle import table_columns
from train.provenance import data_checksums, provenance, provenance_markdown, recipe_info, start_weights

CARD = {"pathclip-nano": {"retrieval/t2i_R@5": 13 / 202, "zeroshot/balanced_accuracy": 0.9957627118644068},
        "pathclip-nano-untrained": {"retrieval/t2i_R@5": 2 / 202}}
V1_COLUMNS = table_columns({"eval_task": "lc25000_colon", "eval_extra_tasks": []})


def compare(card, rebuilt):
    return reproduce.compare_clip("pathclip-nano", "pathclip-nano-untrained", card, rebuilt, V1_COLUMNS)


def test_clip_figures_match_to_the_printed_digit_and_one_retrieval_hit_does_not():
    same = {m: dict(v) for m, v in CARD.items()}
    same["pathclip-nano"]["zeroshot/balanced_accuracy"] = 0.99576  # prints 0.996 like the card
    rows = {(r["model"], r["figure"]): r for r in compare(CARD, same)}
    assert rows[("pathclip-nano", "zero-shot balanced acc.")]["match"]
    assert rows[("pathclip-nano", "text-to-image R@5")]["match"]
    assert rows[("pathclip-nano", "image-to-text R@5")]["match"]  # absent from both: nothing to compare
    one_hit = {m: dict(v) for m, v in CARD.items()}
    one_hit["pathclip-nano"]["retrieval/t2i_R@5"] = 12 / 202  # 0.059 vs 0.064, the case
    rows = {(r["model"], r["figure"]): r for r in compare(CARD, one_hit)}
    bad = rows[("pathclip-nano", "text-to-image R@5")]
    assert not bad["match"] and bad["diff"] == pytest.approx(-1 / 202)
    missing = {"pathclip-nano": {}}
    assert not {(r["model"], r["figure"]): r for r in compare(CARD, missing)}[
        ("pathclip-nano", "text-to-image R@5")]["match"]


def test_vlm_figures_compare_within_the_tolerance_and_read_both_results_layouts():
    card = [{"stage": "sft", "accuracy": 0.854, "by_type": {"option_letter": 0.7, "yes_no": 1.0}},
            {"stage": "ablation: x", "accuracy": 0.1}]
    rebuilt = {"stages": [{"stage": "sft", "accuracy": 0.87, "by_type": {"option_letter": 0.75, "yes_no": 1.0}}],
               "provenance": {}}
    rows = {r["figure"]: r for r in reproduce.compare_vlm(card, rebuilt, tolerance=0.03)}
    assert rows["accuracy"]["match"] and not rows["MCQ"]["match"] and rows["yes/no"]["match"]
    assert rows["blank: accuracy"]["match"]  # neither has it


def test_weights_diff_tells_identical_from_changed_tensors(tmp_path):
    a = {"w": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.zeros(3, dtype=torch.float16)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file({k: v.clone() for k, v in a.items()}, str(tmp_path / "b.safetensors"))
    assert reproduce.weights_diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")["identical"]
    c = {k: v.clone() for k, v in a.items()}
    c["w"][0, 0] = 0.5
    save_file(c, str(tmp_path / "c.safetensors"))
    d = reproduce.weights_diff(tmp_path / "a.safetensors", tmp_path / "c.safetensors")
    assert not d["identical"] and d["tensors_differing"] == 1 and d["worst_tensor"] == "w" and d["max_abs_diff"] == 0.5


def test_main_writes_the_report_and_fails_when_a_figure_differs(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "checksums.json").write_text("{}")
    ok = [reproduce.compare_row("pathclip-nano", "x", 0.5, 0.5)]
    monkeypatch.setattr(reproduce, "run_clip", lambda *a: (ok, ["note"], {"weights": {"identical": True}}))
    monkeypatch.setattr(reproduce, "run_vlm", lambda *a: pytest.fail("--only clip ran the reasoner"))
    assert reproduce.main(["--only", "clip", "--data-v2", str(data), "--out", str(tmp_path / "o")]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| pathclip-nano | x | 0.500 | 0.500 | +0.000 | yes |" in report and "- note" in report
    assert json.loads((tmp_path / "o" / "report.json").read_text())["clip"]["weights"]["identical"]
    seen = []
    monkeypatch.setattr(reproduce, "run_clip", lambda choice, *a: seen.append(choice) or (ok, [], {}))
    assert reproduce.main(["--only", "clip-v1", "--data", str(data), "--out", str(tmp_path / "o")]) == 0
    assert reproduce.main(["--only", "clip", "--data-v2", str(data), "--out", str(tmp_path / "o")]) == 0
    assert seen == ["clip-v1", "clip"]
    monkeypatch.setattr(reproduce, "run_clip", lambda *a: (ok, ["note"], {"weights": {"identical": True}}))
    bad = [reproduce.compare_row("pathclip-nano", "x", 0.5, 0.51)]
    monkeypatch.setattr(reproduce, "run_clip", lambda *a: (bad, [], {}))
    assert reproduce.main(["--only", "clip", "--data-v2", str(data), "--out", str(tmp_path / "o")]) == 1
    assert "| NO |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a built recipe folder"):
        reproduce.main(["--only", "clip-v1", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    from pathvlm.errors import PathVLMError

    def no_data(*a):
        raise PathVLMError("source lc25000_colon: ../shared/data is not here")

    monkeypatch.setattr(reproduce, "ensure_data", no_data)
    assert reproduce.cli(["--only", "clip", "--out", str(tmp_path / "o")]) == 2
    assert "reproduce: source lc25000_colon" in capsys.readouterr().err


def test_provenance_records_recipe_overrides_start_weights_and_data_digests(tmp_path):
    from train.clip.config import load_config

    data = tmp_path / "nano"
    (data / "clip").mkdir(parents=True)
    sums = {"clip/train-00000.parquet": "a" * 64, "sft/train-00000.parquet": "b" * 64, "data_card.md": "c" * 64}
    (data / "checksums.json").write_text(json.dumps(sums))
    (data / "data_card.json").write_text(json.dumps({"recipe_file": "data_recipes/nano.yaml"}))
    d = data_checksums(data, ["clip"])
    assert d["datasets"]["clip"]["files"] == 1 and len(d["datasets"]["clip"]["sha256"]) == 64
    assert d["recipe"] == "data_recipes/nano.yaml"
    sums["clip/train-00000.parquet"] = "d" * 64  # another build of the clip set: another digest
    (data / "checksums.json").write_text(json.dumps(sums))
    assert data_checksums(data, ["clip"])["datasets"]["clip"]["sha256"] != d["datasets"]["clip"]["sha256"]
    assert "error" in data_checksums(tmp_path, ["clip"])

    recipe = "train/recipes/clip/pathclip_nano.yaml"
    cfg = vars(load_config(recipe, {"epochs": 1, "output_dir": "elsewhere"}))
    info = recipe_info(recipe, cfg)
    assert info["path"] == recipe and len(info["sha256"]) == 64 and info["overrides"] == {"epochs": 1}

    s = start_weights("pathclip-nano-untrained")
    assert s["trained_weights"] is None
    v = start_weights("pathvlm-nano-untrained")
    assert v["trained_weights"] is None and v["clip"]["source"] == "pathclip-nano-v1"
    prov = provenance([info], "pathclip-nano-untrained", d, commit={"commit": "f" * 40, "dirty": True})
    md = provenance_markdown(prov)
    assert f"`{'f' * 40}` (with uncommitted changes)" in md and "`pathclip-nano-untrained` (untrained baseline" in md
    assert 'overrides {"epochs": 1}' in md and "`clip/` 1 files" in md and "Environment" not in md
    from train.provenance import environment

    env = environment()
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] in torch.__version__
    md = provenance_markdown(provenance([info], "pathclip-nano-untrained", d, commit={"commit": None}, env=env))
    assert f"torch {env['packages']['torch']}" in md and "Commit**: unknown" in md
    assert env["cpu_model"] is None or env["cpu_model"] in md  # Linux: the model name from /proc/cpuinfo


def test_bundle_evaluates_the_scratch_weights_not_the_shipped_ones(tmp_path):
    from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR
    from train.clip.bundle import create_bundled

    if not NAMED_MODELS["pathclip-nano"].trained:
        pytest.skip("pathclip-nano weights not bundled")
    shipped = load_file(str(WEIGHTS_DIR / "pathclip-nano.safetensors"))
    changed = {k: v.clone() for k, v in shipped.items()}
    changed["logit_scale"] = changed["logit_scale"] + 1
    save_file(changed, str(tmp_path / "pathclip-nano.safetensors"))
    scratch = create_bundled("pathclip-nano", tmp_path)[0]
    named = create_bundled("pathclip-nano", None)[0]
    assert float(scratch.logit_scale.detach()) == pytest.approx(float(shipped["logit_scale"].float()) + 1, abs=1e-2)
    assert float(named.logit_scale.detach()) == pytest.approx(float(shipped["logit_scale"].float()), abs=1e-6)
    key = next(k for k in shipped if k.startswith("visual."))
    assert torch.equal(scratch.state_dict()[key], named.state_dict()[key])


def test_bundle_loads_also_sources_as_shipped_and_only_the_rebuilt_name_from_out(tmp_path, monkeypatch):
    from train.clip import bundle
    from train.clip import data as clip_data
    from train.clip import evaluate as clip_eval

    seen = {}
    monkeypatch.setattr(bundle, "create_bundled", lambda n, d=None: (seen.__setitem__(n, d), (None, None, None))[1])
    monkeypatch.setattr(clip_data, "read_rows", lambda *a, **k: [])
    monkeypatch.setattr(clip_eval, "evaluate", lambda *a, **k: {})
    bundle.compare(["pathclip-nano-untrained", "pathclip-nano-v1", "pathclip-nano"], "d", "test", [], "t", "u",
                   weights_dir=tmp_path, rebuilt="pathclip-nano")
    assert seen == {"pathclip-nano-untrained": None, "pathclip-nano-v1": None, "pathclip-nano": tmp_path}


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(not os.environ.get("PATHVLM_REPRODUCE"), reason="the full rebuild: set PATHVLM_REPRODUCE=1 "
                    "(pathclip-nano-v1, ~15 min of CPU), =clip (pathclip-nano, ~30-40 min), =clip-v3 (~30 min), "
                    "=clip-v2 (~30 min), "
                    "=vlm (pathvlm-nano, ~90 min), =vlm-v1 (~80 min) or =all")
def test_rebuild_matches_the_model_cards(tmp_path):
    data, data_v2 = os.environ.get("PATHVLM_REPRODUCE_DATA"), os.environ.get("PATHVLM_REPRODUCE_DATA_V2")
    args = ["--out", str(tmp_path / "reproduce")] + (["--data", data] if data else []) + \
        (["--data-v2", data_v2] if data_v2 else [])
    which = os.environ["PATHVLM_REPRODUCE"]
    if which != "all":
        args += ["--only", "clip-v1" if which == "1" else which]
    assert reproduce.main(args) == 0, (tmp_path / "reproduce" / "report.md").read_text()


def test_write_provenance_replaces_the_section_and_keeps_each_results_layout(tmp_path):
    from train.provenance import insert_section, write_provenance

    card = "# m\n\nbody\n\n## Limits\n\nnone\n"
    once = insert_section(card, "## Provenance\n\n- a\n", "## Limits")
    assert once.index("## Provenance") < once.index("## Limits") and "body" in once
    twice = insert_section(once, "## Provenance\n\n- b\n", "## Limits")
    assert twice.count("## Provenance") == 1 and "- b" in twice and "- a" not in twice and twice.endswith("none\n")
    prov = {"commit": {"commit": "0" * 40, "dirty": False}, "recipes": [], "start_weights": {}, "data": {}}
    (tmp_path / "v.md").write_text("# v\n\n## Licences\n\nx\n")
    (tmp_path / "v.results.json").write_text(json.dumps([{"stage": "align"}]))
    write_provenance(tmp_path, "v", prov, "## Licences")
    res = json.loads((tmp_path / "v.results.json").read_text())
    assert res["stages"] == [{"stage": "align"}] and res["provenance"]["commit"]["commit"] == "0" * 40
    write_provenance(tmp_path, "v", prov, "## Licences")  # again: still one stage list, one section
    assert json.loads((tmp_path / "v.results.json").read_text())["stages"] == [{"stage": "align"}]
    assert (tmp_path / "v.md").read_text().count("## Provenance") == 1
    (tmp_path / "c.md").write_text(card)
    (tmp_path / "c.results.json").write_text(json.dumps({"pathclip-nano": {"x": 1}}))
    write_provenance(tmp_path, "c", prov, "## Limits")
    assert json.loads((tmp_path / "c.results.json").read_text())["pathclip-nano"] == {"x": 1}


def test_shipped_cards_record_their_provenance():
    from train.provenance import SHIPPED, ROOT

    for name, (folder, recipes, start, *_rest) in SHIPPED.items():
        res = json.loads((ROOT / folder / f"{name}.results.json").read_text())
        prov = res["provenance"]
        assert len(prov["commit"]["commit"]) == 40 and [r["path"] for r in prov["recipes"]] == recipes
        assert prov["start_weights"]["source"] == start and prov["start_weights"]["trained_weights"] is None
        assert all(len(d["sha256"]) == 64 for d in prov["data"]["datasets"].values())
        assert "## Provenance" in (ROOT / folder / f"{name}.md").read_text()


def test_eval_paths_evaluates_one_run_four_ways_beside_the_training_time_figures(tmp_path, tiny_clip_dir, recipe_dir):
    pytest.importorskip("accelerate")
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe
    from train.clip import eval_paths
    from train.clip.config import ClipTrainConfig
    from train.clip.trainer import train_clip

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    recipe.splits.ratios = {"train": 0.7, "test": 0.3}
    build_recipe(recipe, recipe_dir / "data", progress=False)
    run = tmp_path / "run"
    train_clip(ClipTrainConfig(model=str(tiny_clip_dir), data=str(recipe_dir / "data"), output_dir=str(run), epochs=1,
                               batch_size=4, warmup_steps=1, lr=1e-2, lr_tower=1e-2, max_steps=2, seed=0))
    assert eval_paths.main([str(run), "--data", str(recipe_dir / "data"), "--shipped", ""]) == 0
    res = json.loads((run / "eval_paths.json").read_text())
    assert set(res) == {"fp32", "fp32 channels_last", "fp16 bundle", "fp16 bundle channels_last", "training time"}
    assert res["training time"]["step"] == 2 and "zeroshot/balanced_accuracy" in res["fp32"]
    from train.provenance import git_commit

    assert json.loads((run / "final" / "pathvlm.json").read_text())["commit"] == git_commit()  # the training commit
    from pathvlm.clip.factory import create_clip

    model = create_clip(str(run / "final"))[0]
    rounded = eval_paths.fp16_rounded(model)
    w = rounded.state_dict()["visual.head.proj.weight"]
    assert torch.equal(w, w.half().float()) and not torch.equal(w, model.state_dict()["visual.head.proj.weight"])
    assert torch.equal(rounded.state_dict()["text.transformer.embeddings.word_embeddings.weight"],
                       model.state_dict()["text.transformer.embeddings.word_embeddings.weight"])


@pytest.mark.parametrize("choice", ["vlm", "vlm-v1"])
def test_the_reasoner_rebuild_chains_the_stages_and_bundles_into_the_scratch_folder(tmp_path, monkeypatch, choice,
                                                                                   tiny_reasoner_dir, built_fixture_data):
    """run_vlm's wiring on a tiny reasoner, as each bundled reasoner was made: v1 align -> SFT -> GRPO with the align
    stage re-asked, v2 align -> SFT with the test split read once; each stage from the previous stage's adapter,
    the bundle and report in the scratch folder under the card's file name, the shipped folder untouched."""
    pytest.importorskip("trl")
    import dataclasses

    import yaml

    build = reproduce.VLM_MODELS[choice]
    tiny = dict(model=str(tiny_reasoner_dir), batch_size=4, max_steps=1, lr=5e-2, lora_rank=4, lora_alpha=8,
                save_steps=1, logging_steps=1, eval_samples=4, eval_max_new_tokens=8, eval_batch_size=4, max_length=256,
                report_to="none", max_completion_length=8, num_generations=2, seed=0)
    recipes = {}
    for stage in build.recipes:
        path = tmp_path / f"{stage}.yaml"
        path.write_text(yaml.safe_dump({"stage": stage, **tiny, "lora": stage != "align"}))
        recipes[stage] = str(path)
    tiny_build = dataclasses.replace(build, recipes=recipes, align_eval=(8, 4) if build.align_eval else None)
    monkeypatch.setitem(reproduce.VLM_MODELS, choice, tiny_build)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    card = {"stages": [{"stage": s, "accuracy": 0.5, "by_type": {}} for s in recipes]}
    if build.test_read:
        card["test"] = {"accuracy": 0.5, "by_type": {"option_letter": 0.5}, "by_source": {}}
    (shipped / f"{build.file}.results.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    rows, notes, extra = reproduce.run_vlm(choice, str(built_fixture_data), out, False, out / "weights", shipped, 1.0)
    models = {r["model"] for r in rows}
    assert {f"{build.label} {s}" for s in recipes} <= models
    assert (f"{build.label} test" in models) == build.test_read
    assert all(r["match"] for r in rows if r["figure"] == "accuracy" and r["card"] is not None)  # tolerance 1.0
    runs = {s: out / "vlm" / f"{build.file}-{s}" for s in recipes}
    sft_cfg = json.loads((runs["sft"] / "results.json").read_text())["config"]
    assert sft_cfg["init_adapter"] == str(runs["align"] / "adapter.safetensors")
    assert (runs["align"] / "eval.json").exists() == bool(build.align_eval)
    last = list(runs.values())[-1]
    assert (last / "eval-test.json").exists() == build.test_read
    res = json.loads((out / "weights" / f"{build.file}.results.json").read_text())
    assert [s["stage"] for s in res["stages"]] == list(recipes)
    assert bool(res.get("test")) == build.test_read
    assert not build.test_read or res["test"]["split"] == "test" and res["test"]["by_source"]
    assert [r["path"] for r in res["provenance"]["recipes"]] == list(recipes.values())
    last_commit = json.loads((last / "results.json").read_text())["commit"]
    assert res["provenance"]["commit"] == last_commit and last_commit["commit"]
    assert (out / "weights" / f"{build.file}.safetensors").exists()
    assert "## Provenance" in (out / "weights" / f"{build.file}.md").read_text()
    assert json.loads((shipped / f"{build.file}.results.json").read_text()) == card
    assert not extra["weights"]["identical"] and "no shipped file" in notes[0]  # no weights in the fake folder
    from train.provenance import environment

    here = environment()
    assert extra["cpu_capability"] == here["cpu_capability"] and extra["cpu_model"] == here["cpu_model"]
    assert f"this rebuild on an {here['cpu_capability']} CPU" in notes[0] or \
        f"this rebuild on a {here['cpu_capability']} CPU" in notes[0]
    shutil.copy(out / "weights" / f"{build.file}.safetensors", shipped)
    assert reproduce.weights_diff(shipped / f"{build.file}.safetensors",
                                  out / "weights" / f"{build.file}.safetensors")["identical"]


def test_vlm_figures_include_the_test_read_by_source_and_hold_to_the_digit_at_tolerance_zero():
    card = {"stages": [{"stage": "sft", "accuracy": 0.8177}],
            "test": {"accuracy": 0.8407, "by_type": {"option_letter": 0.818, "yes_no": 0.863},
                     "by_source": {"oral_scc": {"accuracy": 0.6875, "option_letter": 0.692, "yes_no": 0.683}}}}
    same = json.loads(json.dumps(card))
    same["test"]["accuracy"] = 0.84074  # prints 0.841 like the card
    rows = {(r["model"], r["figure"]): r for r in reproduce.compare_vlm(card, same, 0.0)}
    assert rows[("pathvlm-nano test", "accuracy")]["match"] and rows[("pathvlm-nano test oral_scc", "MCQ")]["match"]
    one_question = json.loads(json.dumps(card))
    one_question["test"]["by_source"]["oral_scc"]["accuracy"] = 0.6875 - 1 / 208
    rows = {(r["model"], r["figure"]): r for r in reproduce.compare_vlm(card, one_question, 0.0)}
    assert not rows[("pathvlm-nano test oral_scc", "accuracy")]["match"]
    assert rows[("pathvlm-nano test oral_scc", "accuracy")]["diff"] == pytest.approx(-1 / 208)
    no_test = {"stages": card["stages"]}
    rows = {(r["model"], r["figure"]): r for r in reproduce.compare_vlm(card, no_test, 0.0)}
    assert not rows[("pathvlm-nano test", "accuracy")]["match"]  # the card has a test read, the rebuild none


def test_a_card_from_another_cpu_is_named_when_figures_differ():
    same = {"card_cpu_capability": "AVX512", "cpu_capability": "AVX512", "card_cpu_model": None, "cpu_model": "x"}
    assert reproduce.other_cpu({"clip": same, "vlm": {"card_cpu_capability": None, "cpu_capability": "AVX2"}}) == []
    assert reproduce.other_cpu({"clip": {**same, "card_cpu_capability": "AVX2"}}) == ["clip"]
    assert reproduce.other_cpu({"vlm": {**same, "card_cpu_model": "y"}}) == ["vlm"]
