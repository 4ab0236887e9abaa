"""PathVLM stages on a tiny model: align, SFT and GRPO steps change the weights they should, adapters
chain between stages, LoRA merge keeps outputs, resume picks the last complete checkpoint."""
import json
from pathlib import Path

import pytest
import torch

from train.vlm.config import VLMTrainConfig
from train.vlm.trainer import last_complete_checkpoint, prepare_model, run_stage


def cfg_for(stage, tiny_reasoner_dir, data, out, **kw):
    base = dict(stage=stage, model=str(tiny_reasoner_dir), data=str(data), output_dir=str(out), batch_size=4,
                max_steps=2, lr=5e-2, lora_rank=4, lora_alpha=8, save_steps=1, logging_steps=1, eval_samples=4,
                eval_max_new_tokens=8, eval_batch_size=4, max_length=256, report_to="none",
                max_completion_length=8, num_generations=2)
    base.update(kw)
    return VLMTrainConfig(**base)


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_align_then_sft_then_grpo_chain(tiny_reasoner_dir, built_fixture_data, tmp_path):
    start = _state(tiny_reasoner_dir)
    align = run_stage(cfg_for("align", tiny_reasoner_dir, built_fixture_data, tmp_path / "align", lora=False))
    a = _state(tmp_path / "align" / "final")
    proj = [k for k in a if k.startswith("model.multi_modal_projector.")]
    lm = [k for k in a if k.startswith("model.language_model.")]
    assert any(not torch.equal(a[k], start[k]) for k in proj)  # the projector trained
    assert [k for k in lm if not torch.equal(a[k], start[k])] == []  # the LM did not
    assert all(torch.equal(a[k], start[k]) for k in a if k.startswith("model.vision_tower."))
    assert align["steps"] == 2 and 0 <= align["eval"]["accuracy"] <= 1
    assert (tmp_path / "align" / "curves.png").stat().st_size > 0

    sft = run_stage(cfg_for("sft", tiny_reasoner_dir, built_fixture_data, tmp_path / "sft",
                            init_adapter=align["adapter"], abstain_fraction=0.2))
    s = _state(tmp_path / "sft" / "final")
    assert any(not torch.equal(s[k], a[k]) for k in lm)  # LoRA merged into the LM weights
    assert all(torch.equal(s[k], a[k]) for k in a if k.startswith("model.vision_tower."))
    assert json.loads((tmp_path / "sft" / "results.json").read_text())["steps"] == 2
    assert "control_blank" in sft["eval"]
    from safetensors.torch import load_file

    snapshot = load_file(str(tmp_path / "sft" / "checkpoint-2" / "adapter.safetensors"))  # written at each save
    final_adapter = load_file(sft["adapter"])
    assert snapshot.keys() == final_adapter.keys() and all(torch.equal(snapshot[k], final_adapter[k]) for k in snapshot)

    grpo = run_stage(cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path / "grpo",
                             init_adapter=sft["adapter"], rewards=["accuracy", "format", "length"], lr=1e-1,
                             abstain_fraction=0.25))
    g = _state(tmp_path / "grpo" / "final")
    assert any(not torch.equal(g[k], s[k]) for k in lm)
    assert any("reward" in h for h in grpo["log_history"])
    from pathvlm.vlm.adapters import apply_bundle
    from pathvlm.vlm.build import load_vlm

    base, _ = load_vlm(str(tiny_reasoner_dir))
    apply_bundle(base, grpo["adapter"])  # the GRPO adapter holds only the trained copy (no TRL "ref" copy)
    assert torch.allclose(base.multi_modal_projector.linear_1.weight,
                          load_vlm(grpo["final"])[0].multi_modal_projector.linear_1.weight, atol=1e-3)


def test_abstention_copies(tiny_reasoner_dir, built_fixture_data, tmp_path):
    """SFT and GRPO copies of closed questions on a blank or noise image answer "cannot determine"; the
    originals are all kept."""
    import numpy as np

    from train.vlm.data import ABSTAIN_ANSWER, grpo_dataset, sft_dataset

    def cfg(frac):
        return cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path, abstain_fraction=frac)

    plain, copies = grpo_dataset(cfg(0.0), "train"), grpo_dataset(cfg(0.25), "train")
    extra = [r for r in copies if r["answer_type"] == "abstain"]
    assert len(copies) == len(plain) + len(extra) and len(extra) == round(0.25 * len(plain))
    assert sorted(r["answer"] for r in copies if r["answer_type"] != "abstain") == sorted(plain["answer"])
    for r in extra:
        assert r["answer"] == "cannot determine" and r["prompt"][0]["content"][0]["type"] == "image"
        pixels = np.asarray(r["image"])
        assert pixels.min() == 255 or pixels.std() > 50  # a blank slide or noise, never the tissue
    sft = sft_dataset(cfg(0.2), "train")
    answers = [m[-1]["content"][0]["text"] for m in sft["messages"]]
    assert answers.count(ABSTAIN_ANSWER) == round(0.2 * len(sft_dataset(cfg(0.0), "train")))


def test_balance_option_letters(tiny_reasoner_dir, built_fixture_data, tmp_path):
    """Rotated multiple-choice prompts keep their question and options, name the same right option under its
    new letter in text, options and answer alike, and spread the right letters evenly; other rows are untouched."""
    from collections import Counter

    from train.vlm.data import balance_option_letters, grpo_dataset, rotate_options

    cfg = cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path)
    plain = grpo_dataset(cfg, "train")
    # the fixture's letters are as the builder drew them: skewed, so there is something to balance
    mcq = [i for i, t in enumerate(plain["answer_type"]) if t == "option_letter"]
    assert len(mcq) >= 8
    skewed = plain.map(lambda r, i: rotate_options(r, 3) if i in mcq else r, with_indices=True)
    balanced = balance_option_letters(skewed, seed=0)
    assert Counter(skewed.select(mcq)["answer"]) == {"D": len(mcq)}
    counts = Counter(balanced.select(mcq)["answer"])
    assert set(counts) == set("ABCD") and max(counts.values()) - min(counts.values()) <= 1
    for old, new in zip(plain, balanced):
        text = new["prompt"][-1]["content"][-1]["text"]
        if old["answer_type"] != "option_letter":
            assert new == old
            continue
        right = old["options"]["ABCD".index(old["answer"])]
        assert new["options"]["ABCD".index(new["answer"])] == right and sorted(new["options"]) == sorted(old["options"])
        assert f"\n{new['answer']}. {right}\n" in text
        assert text.split("\n")[0] == old["prompt"][-1]["content"][-1]["text"].split("\n")[0]
    assert balance_option_letters(skewed, seed=0)["answer"] == balanced["answer"]  # seeded
    on = grpo_dataset(cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path, balance_letters=True), "train")
    assert Counter(on.select(mcq)["answer"]) == Counter(balance_option_letters(plain, seed=0).select(mcq)["answer"])
    broken = dict(plain[mcq[0]], options=["not", "the", "listed", "options"])
    with pytest.raises(Exception, match="not listed"):
        rotate_options(broken, 0)


def test_counterparts_turn_the_answer_on_the_same_image(tiny_reasoner_dir, built_fixture_data, tmp_path):
    """Each turnable closed question gets a partner on the same image whose right answer differs: yes/no about
    the tissue's own class <-> another class, the right option two letters on; other rows get none."""
    import random

    import numpy as np

    from train.vlm.data import YES_NO_QUESTION, add_counterparts, counterpart, grpo_dataset

    plain = grpo_dataset(cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path), "train")
    paired = add_counterparts(plain, seed=0)
    classes = sorted(set(plain["label"]) - {None})
    turned = 0
    for row in plain:
        partner = counterpart(row, classes, random.Random(0))
        if partner is None:
            assert row["answer_type"] not in ("option_letter",)
            continue
        turned += 1
        assert partner["answer"] != row["answer"] and np.array_equal(np.asarray(partner["image"]), np.asarray(row["image"]))
        text = partner["prompt"][-1]["content"][-1]["text"]
        if row["answer_type"] == "yes_no":
            asked = YES_NO_QUESTION.match(text).group("asked")
            assert (asked == row["label"]) == (partner["answer"] == "yes")
            assert text.split("?", 1)[1] == row["prompt"][-1]["content"][-1]["text"].split("?", 1)[1]
        else:
            right = row["options"]["ABCD".index(row["answer"])]
            assert partner["answer"] == "ABCD"[("ABCD".index(row["answer"]) + 2) % 4]
            assert partner["options"]["ABCD".index(partner["answer"])] == right and f"{partner['answer']}. {right}" in text
    yes_no = [r for r in plain if r["answer_type"] == "yes_no"]
    assert turned > len(yes_no) // 2 and any(r["answer"] == "yes" for r in yes_no) and any(r["answer"] == "no" for r in yes_no)
    assert len(paired) == len(plain) + turned
    on = grpo_dataset(cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path, counterparts=True), "train")
    assert len(on) == len(paired)
    # a yes/no question that names no class (a PathVQA-style one) cannot be turned
    odd = dict(yes_no[0], prompt=[{"role": "user", "content": [{"type": "image", "text": None},
                                                               {"type": "text", "text": "Is there necrosis?"}]}])
    assert counterpart(odd, classes, random.Random(0)) is None


def test_adapter_bundle_reproduces_merged_model(tiny_reasoner_dir, built_fixture_data, tmp_path):
    """LoRA merge keeps outputs: the merged folder, the live peft model and base + bundle agree."""
    from pathvlm.vlm.adapters import apply_bundle
    from pathvlm.vlm.build import load_vlm

    cfg = cfg_for("sft", tiny_reasoner_dir, built_fixture_data, tmp_path / "sft", eval_samples=0)
    run_stage(cfg)
    merged, proc = load_vlm(str(tmp_path / "sft" / "final"))
    base, _ = load_vlm(str(tiny_reasoner_dir))
    apply_bundle(base, tmp_path / "sft" / "adapter.safetensors")
    live, _ = prepare_model(cfg_for("sft", tiny_reasoner_dir, built_fixture_data, tmp_path / "x",
                                    init_adapter=str(tmp_path / "sft" / "adapter.safetensors")))
    live.eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this benign?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    from PIL import Image

    x = proc(images=[Image.new("RGB", (40, 40), (200, 120, 180))], text=text, return_tensors="pt")
    with torch.no_grad():
        a, b, c = merged(**x).logits, base(**x).logits, live(**x).logits
    assert torch.allclose(b, c, atol=1e-4)  # base + merged bundle == the live LoRA model loaded from it
    assert torch.allclose(a, b, atol=2e-2)  # the fp16 bundle == the fp32 merged folder, to fp16 precision
    assert not torch.allclose(a, base_logits(tiny_reasoner_dir, x), atol=1e-3)  # and training did change outputs
    # `python -m train.vlm.evaluate` on a run brought back as its adapter alone: base + adapter
    import shutil

    from train.vlm.evaluate import load_run

    only_adapter = tmp_path / "brought-back"
    only_adapter.mkdir()
    shutil.copy(tmp_path / "sft" / "adapter.safetensors", only_adapter)
    with torch.no_grad():
        assert torch.equal(load_run(only_adapter, cfg)[0](**x).logits, b)
        assert torch.equal(load_run(tmp_path / "sft", cfg)[0](**x).logits, a)
    with pytest.raises(Exception, match="neither final/ nor adapter.safetensors"):
        load_run(tmp_path / "x" / "missing", cfg)


def base_logits(folder, x):
    from pathvlm.vlm.build import load_vlm

    m, _ = load_vlm(str(folder))
    with torch.no_grad():
        return m(**x).logits


def test_resume_uses_last_complete_checkpoint(tmp_path):
    for n in (2, 4, 6):
        (tmp_path / f"checkpoint-{n}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path).name == "checkpoint-4"  # checkpoint-6 was cut off mid-write
    assert last_complete_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parent.parent / "train/recipes/vlm").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_committed_recipes_load(recipe):
    from train.vlm.config import load_config

    assert load_config(recipe).stage in recipe.stem  # valid fields and values; nano_grpo*.yaml are grpo recipes


def test_config_errors(tmp_path):
    from pathvlm.errors import PathVLMError
    from train.vlm.config import load_config

    p = tmp_path / "r.yaml"
    p.write_text("stage: grpo\nnum_generations: 1\n")
    with pytest.raises(PathVLMError, match="num_generations"):
        load_config(p)
    p.write_text("stage: grpo\nnum_generations: 6\nbatch_size: 8\n")
    with pytest.raises(PathVLMError, match="multiple of num_generations"):
        load_config(p)
    p.write_text("stage: sft\nbogus: 1\n")
    with pytest.raises(PathVLMError, match="unknown field"):
        load_config(p)
    p.write_text("stage: sft\n")
    with pytest.raises(PathVLMError, match="pathvlm train sft"):
        load_config(p, stage="grpo")


def test_sft_under_accelerate_two_cpu_processes(tmp_path, tiny_reasoner_dir, built_fixture_data):
    """The documented launch line with two CPU processes (gloo): DDP through TRL runs and rank 0 saves."""
    import os
    import subprocess
    import sys

    import yaml
    from safetensors.torch import load_file

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump(dict(stage="sft", model=str(tiny_reasoner_dir), data=str(built_fixture_data),
                                       output_dir=str(tmp_path / "run"), batch_size=2, max_steps=2, lr=5e-2,
                                       lora_rank=4, lora_alpha=8, warmup_ratio=0.0, eval_samples=0,
                                       report_to="none", save_steps=2, max_length=256)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                "train/recipes/accelerate_configs/cpu_ddp.yaml", "--main_process_port", "29578"]
    proc = subprocess.run(launcher + ["-m", "pathvlm", "train", "sft", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_file(str(tiny_reasoner_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("model.language_model."))


def test_paired_comparison_is_mcnemar():
    from train.vlm.evaluate import paired_comparison

    before = [1] * 50 + [0] * 50
    after = [1] * 50 + [1] * 9 + [0] * 41  # 9 gained, 0 lost: p = 2 / 2**9
    r = paired_comparison(before, after)
    assert (r["gained"], r["lost"]) == (9, 0) and r["mcnemar_p"] == pytest.approx(2 / 512)
    assert r["accuracy_change"] == pytest.approx(0.09)
    assert paired_comparison([1, 0], [0, 1])["mcnemar_p"] == 1.0  # one each way: no evidence
    assert paired_comparison([1, 1], [1, 1])["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="same questions"):
        paired_comparison([1], [1, 0])


def test_breakdown_and_paired_comparison_per_source():
    from train.vlm.evaluate import breakdown, output_name, paired_by_source

    correct = [1, 0, 1, 1, 0, 0]
    types = ["option_letter", "yes_no", "yes_no", "option_letter", "option_letter", "yes_no"]
    sources = ["colon", "colon", "colon", "oral", "oral", "oral"]
    b = breakdown(correct, types, sources)
    assert b["colon"] == {"n": 3, "accuracy": pytest.approx(2 / 3), "n_option_letter": 1, "option_letter": 1.0,
                          "n_yes_no": 2, "yes_no": 0.5}
    assert b["oral"]["option_letter"] == 0.5 and b["oral"]["yes_no"] == 0.0
    assert breakdown([1], ["yes_no"], ["x"])["x"]["option_letter"] is None  # no MCQ there: not 0

    ids = [f"q{i}" for i in range(6)]
    old = {"ids": ids, "sources": sources, "correct": correct}
    # the new model answers in another order and misses q0, gains q4 and q5; q9 is not in the old one
    new = {"ids": ["q9", *reversed(ids)], "sources": ["oral", *reversed(sources)], "correct": [1, 1, 1, 1, 1, 1, 0]}
    p = paired_by_source(old, new)
    assert (p["all"]["n"], p["all"]["gained"], p["all"]["lost"]) == (6, 3, 1)
    assert (p["colon"]["gained"], p["colon"]["lost"]) == (1, 1)
    assert (p["oral"]["n"], p["oral"]["gained"], p["oral"]["lost"]) == (3, 2, 0)
    with pytest.raises(ValueError, match="ids"):
        paired_by_source({"correct": [1]}, new)
    with pytest.raises(ValueError, match="share no questions"):
        paired_by_source(old, {"ids": ["z"], "sources": ["oral"], "correct": [1]})
    assert output_name(None, 0.0) == "eval.json" and output_name("test", 0.0) == "eval-test.json"
    assert output_name(None, 0.7) == "eval-t0.7.json"


def test_grpo_prompt_screening(tiny_reasoner_dir, built_fixture_data, tmp_path, monkeypatch):
    """The starting policy answers a pool once; GRPO trains mostly on what it missed, and a resumed run
    reuses the saved screening instead of answering again."""
    from train.vlm import screening
    from train.vlm.screening import pick_screened

    cfg = cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path / "grpo", screen_prompts=8,
                  max_train_samples=4, screen_hard_fraction=0.75, max_steps=1, eval_samples=0)
    res = run_stage(cfg)
    saved = json.loads((tmp_path / "grpo" / "screening.json").read_text())
    assert saved["pool_size"] == 8 and len(saved["correct"]) == 8
    s = res["screening"]
    assert s["missed"] == min(3, s["pool_missed"]) and s["missed"] + s["answered"] == res["train_samples"] <= 4

    import pathvlm.vlm.build
    from datasets import Dataset

    def no_model(*a, **k):
        raise AssertionError("the saved screening should have been reused")

    monkeypatch.setattr(pathvlm.vlm.build, "load_vlm", no_model)
    assert screening.screen_prompts(cfg, Dataset.from_dict({"x": list(range(8))}), tmp_path / "grpo") == saved
    pool = Dataset.from_dict({"x": list(range(6))})
    # picking: 3 of 4 from the missed, the rest from the answered, deterministic
    chosen, counts = pick_screened(pool, [0, 1, 0, 1, 0, 1], 4, 0.75, seed=0)
    assert counts == {"missed": 3, "answered": 1, "pool_missed": 3}
    assert sorted(chosen["x"]) == chosen["x"] and {0, 2, 4} <= set(chosen["x"])
    assert pick_screened(pool, [0, 1, 0, 1, 0, 1], 4, 0.75, seed=0)[0]["x"] == chosen["x"]
    with pytest.raises(Exception, match="screen_hard_fraction"):
        pick_screened(pool, [0] * 6, 4, 1.5, seed=0)


def test_bundle_pairs_each_stage_with_the_one_before_and_ablations_with_their_start():
    from train.vlm.bundle import paired_lines

    def row(stage, d, start, correct):
        return {"stage": stage, "dir": d, "started_from": start, "correct": correct}

    rows = [row("align", "r/a", None, [0, 0, 0, 0]), row("sft", "r/s", "r/a", [1, 1, 0, 0]),
            row("grpo (g1)", "r/g1", "r/s", [1, 1, 1, 0]), row("grpo (g2)", "r/g2", "r/g1", [1, 1, 1, 1]),
            row("ablation: x", "r/x", "r/s", [0, 0, 0, 0])]
    table = [line for line in paired_lines(rows) if line.startswith("| ") and "->" in line]
    assert [line.split(" | ")[0][2:] for line in table] == [
        "align -> sft", "sft -> grpo (g1)", "grpo (g1) -> grpo (g2)", "sft -> ablation: x"]
    assert table[-1].split(" | ")[2:4] == ["0", "2"]  # the ablation lost sft's two right answers


def test_error_analysis_sorts_perception_from_reasoning():
    from pathvlm.data.knowledge import KnowledgeBase
    from train.vlm.error_analysis import classify

    kb = KnowledgeBase.load()
    obs = {label: kb.observations(label) for label in kb.classes}
    aca, benign = obs["colon adenocarcinoma"], obs["benign colonic tissue"]
    mcq = {"label": "colon adenocarcinoma", "answer_type": "option_letter"}
    yn = {"label": "colon adenocarcinoma", "answer_type": "yes_no"}
    assert classify(mcq, f"<think>{aca} This fits colon adenocarcinoma, which is option B.</think><answer>B</answer>",
                    True, obs) == "correct"
    assert classify(mcq, f"<think>{aca} ...option C.</think><answer>C</answer>", False, obs) == "wrong_letter"
    mcq["options"] = ["benign colonic tissue", "colon adenocarcinoma", "ovarian stroma"]
    scan = "A. benign colonic tissue: no. B. colon adenocarcinoma: yes, so the answer is B."
    cases = [  # (reasoning after the description, final answer, correct, kind)
        ("This fits colon adenocarcinoma, which is option A.", "A", False, "wrong_lookup"),
        ("This fits benign colonic tissue, which is option A.", "A", False, "wrong_conclusion"),
        ("This fits colon adenocarcinoma, which is option B.", "A", False, "wrong_letter"),
        (scan, "B", True, "correct"),  # the option-scan format
        ("A. benign colonic tissue: yes, so the answer is A.", "A", False, "wrong_conclusion"),
        ("A. colon adenocarcinoma: yes, so the answer is A.", "A", False, "wrong_lookup"),
    ]
    for reasoning, letter, correct, kind in cases:
        assert classify(mcq, f"<think>{aca} {reasoning}</think><answer>{letter}</answer>", correct, obs) == kind, reasoning
    assert classify(yn, f"<think>{aca} These features are those of benign colonic tissue.</think><answer>yes</answer>",
                    False, obs) == "wrong_verdict"
    assert classify(yn, f"<think>{benign}</think><answer>no</answer>", False, obs) == "wrong_tissue"
    assert classify(yn, "<answer>yes</answer>", False, obs) == "no_description"


def test_sampled_evaluation_is_seeded(tiny_reasoner_dir, built_fixture_data, tmp_path):
    """`evaluate --temperature T` samples the answers GRPO trains on, reproducibly for a seed."""
    from pathvlm.vlm.build import load_vlm
    from train.vlm.evaluate import closed_question_accuracy

    model, proc = load_vlm(str(tiny_reasoner_dir))
    cfg = cfg_for("grpo", tiny_reasoner_dir, built_fixture_data, tmp_path, eval_samples=4, eval_max_new_tokens=6)
    first = closed_question_accuracy(model, proc, cfg, (), temperature=1.0)
    again = closed_question_accuracy(model, proc, cfg, (), temperature=1.0)
    greedy = closed_question_accuracy(model, proc, cfg, ())
    assert first["decoding"] == "sampled, temperature 1.0" and greedy["decoding"] == "greedy"
    assert [e["completion"] for e in first["examples"]] == [e["completion"] for e in again["examples"]]
    assert [e["completion"] for e in first["examples"]] != [e["completion"] for e in greedy["examples"]]


def test_bundle_card_names_the_release_its_tower_data_and_held_out_figures(tmp_path):
    from train.vlm.bundle import model_card, variant_of

    data = tmp_path / "build"
    data.mkdir()
    (data / "data_card.json").write_text(json.dumps({"recipe_file": "data_recipes/nano_v2.yaml"}))
    assert variant_of(str(data)).recipe == "data_recipes/nano_v2.yaml"  # by the recipe, whatever the folder
    assert variant_of("runs/data/nano").script.endswith("train_nano.sh")
    assert variant_of(str(tmp_path)).recipe == "?"  # another recipe's build: plain text, no error
    row = {"stage": "grpo", "dir": "r/g", "steps": 4, "train_samples": 8, "train_seconds": 1.0, "eval_n": 4,
           "accuracy": 0.5, "by_type": {"option_letter": 0.5, "yes_no": 0.5}, "eval_split": "val", "correct": [1, 0, 1, 0]}
    test = {"n": 6, "accuracy": 0.5, "max_new_tokens": 160, "by_type": {"option_letter": 1 / 3, "yes_no": 2 / 3},
            "by_source": {"lc25000_colon": {"n": 4, "accuracy": 0.75, "option_letter": 0.5, "yes_no": 1.0},
                          "oral_scc": {"n": 2, "accuracy": 0.0, "option_letter": 0.0, "yes_no": None}}}
    paired = {"before": "pathvlm-nano-v1", "comparison": {
        "all": {"n": 6, "gained": 2, "lost": 1, "accuracy_change": 1 / 6, "mcnemar_p": 1.0}}}
    card = model_card([row], 12_000_000, None, name="pathvlm-nano-v2", tower="pathclip-nano-v2", data=str(data),
                      test=test, paired=paired)
    assert card.startswith("# pathvlm-nano-v2\n") and "**pathclip-nano-v2**'s image tower" in card
    assert "`pathvlm-nano-v2.safetensors`" in card and "oral mucosa" in card and "train_nano_v2.sh" in card
    assert "the `grpo` val split" in card and "hooks above read the `val` split" in card
    assert "| oral_scc | 2 | 0.000 | 0.000 | – |" in card and "| all | 6 | 0.500 | 0.333 | 0.667 |" in card
    assert "Against `pathvlm-nano-v1`" in card and "| all | 6 | 2 | 1 | +0.167 | 1 |" in card
    v3 = model_card([row], 12_000_000, None, name="pathvlm-nano-v3", tower="pathclip-nano-v3", data=str(data),
                    script="train/recipes/vlm/train_nano_v3.sh")  # the same data, another script
    assert "bash train/recipes/vlm/train_nano_v3.sh" in v3 and "train_nano_v2.sh" not in v3
    plain = model_card([row], 12_000_000)  # no held-out evaluation: no section
    assert "Held-out test split" not in plain and "**pathclip-nano-v1**" in plain


def test_error_analysis_reads_magnification_texts_and_reclassifies_saved_answers():
    from pathvlm.data.knowledge import KnowledgeBase
    from train.vlm.error_analysis import class_observations, classify, realign

    kb = KnowledgeBase.load()
    obs = class_observations(kb)
    label = "oral squamous cell carcinoma"
    high = kb.observations(label, "400x")
    assert high != kb.observations(label) and high in obs[label]
    row = {"label": label, "answer_type": "option_letter",
           "options": ["colon adenocarcinoma", label, "inflammatory infiltrate", "normal oral mucosa"]}
    text = f"<think>{high} This fits {label}, which is option D.</think><answer>D</answer>"
    assert classify(row, text, False, obs) == "wrong_lookup"  # was no_description with the general text only
    rows = [{"question": q, "answer": a, "k": k} for k, (q, a) in enumerate([("q1", "A"), ("q2", "B"), ("q1", "A")])]
    assert [r["k"] for r in realign(rows, [{"question": "q2", "answer": "B"}, {"question": "q1", "answer": "A"}])] == [1, 2]
    with pytest.raises(ValueError, match="does not match"):
        realign(rows, [{"question": "q3", "answer": "A"}])
