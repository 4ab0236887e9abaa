"""Option grounding (pathvlm.vlm.option_grounding): the answer letter is the letter of the option the reasoning names."""
from __future__ import annotations

import pytest
import torch

from pathvlm.vlm.option_grounding import (GroundingLogitsProcessor, OptionGrounding, last_user_text, named_option,
                                          parse_options)

QUESTION = ("Which diagnosis best fits this H&E image?\nA. ovarian stroma\nB. high-grade serous carcinoma\n"
            "C. benign colonic tissue\nD. colon adenocarcinoma\nThink step by step inside <think></think>, then give "
            "the final answer inside <answer></answer>.")
REASONING = ("<think>The crypts are straight, regular and evenly spaced. This fits benign colonic tissue, which is "
             "option")


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE that, like SmolLM2's, has " A" ... " D" as single tokens."""
    from conftest import byte_level_bpe

    return byte_level_bpe([REASONING + f" {L}.</think><answer>{L}</answer>" for L in "ABCD"] * 20 + [QUESTION] * 5, 400)


def test_parse_options_reads_a_lettered_list_and_nothing_else():
    assert parse_options(QUESTION) == {"A": "ovarian stroma", "B": "high-grade serous carcinoma",
                                       "C": "benign colonic tissue", "D": "colon adenocarcinoma"}
    assert parse_options("Is this benign colonic tissue? Answer yes or no.") == {}
    assert parse_options("B. one\nC. two") == {}  # not lettered from A
    assert parse_options("A. only one") == {}


def test_named_option_takes_the_one_option_the_sentence_names():
    opts = parse_options(QUESTION)
    assert named_option("This fits benign colonic tissue, ", opts) == "C"
    assert named_option("This fits Colon Adenocarcinoma, ", opts) == "D"  # case does not matter
    assert named_option("This fits something else, ", opts) is None
    assert named_option("Not ovarian stroma but colon adenocarcinoma, ", opts) is None  # two options: ambiguous
    nested = {"A": "carcinoma", "B": "oral squamous cell carcinoma", "C": "benign"}
    assert named_option("This fits oral squamous cell carcinoma, ", nested) == "B"  # the longest mention


def test_the_lookup_and_the_answer_follow_the_named_option(tokenizer):
    g = OptionGrounding.for_prompt(tokenizer, QUESTION)
    spaced_c, bare_c = tokenizer.encode(" C")[0], tokenizer.encode("C")[0]
    assert len(tokenizer.encode(" C")) == 1
    assert g.forced(tokenizer.encode(REASONING)) == spaced_c
    # the model wrote another letter in its reasoning: the answer repeats the reasoning's letter, not a new one
    assert g.forced(tokenizer.encode(REASONING + " B.</think><answer>")) == tokenizer.encode("B")[0]
    assert g.forced(tokenizer.encode(REASONING + " C.</think><answer>")) == bare_c
    assert g.forced(tokenizer.encode("<think>The crypts are straight")) is None
    assert g.forced(tokenizer.encode("<think>This fits nothing listed, which is option")) is None
    assert g.forced([]) is None
    logits = torch.zeros(1, len(tokenizer))
    masked = g.apply(tokenizer.encode(REASONING), logits)
    assert masked.argmax().item() == spaced_c and torch.isinf(masked).sum() == len(tokenizer) - 1
    assert OptionGrounding.for_prompt(tokenizer, "Is this benign colonic tissue? Answer yes or no.") is None


def test_last_user_text_reads_string_and_part_lists():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "image"},
                                                                           {"type": "text", "text": QUESTION}]}]
    assert last_user_text(msgs) == QUESTION
    assert last_user_text([{"role": "user", "content": "plain"}, {"role": "assistant", "content": "x"}]) == "plain"
    assert last_user_text([]) == ""


class ForceAlways:
    """A grounding that forces one token at every step (to see that decoders apply it)."""

    def __init__(self, tid):
        self.tid = tid

    def apply(self, new_ids, logits):
        out = torch.full_like(logits, float("-inf"))
        out[..., self.tid] = 0.0
        return out


@pytest.fixture(scope="module")
def reasoner(tiny_reasoner_dir):
    from pathvlm.chat import load_reasoner

    return load_reasoner(str(tiny_reasoner_dir))


def test_decoders_apply_the_constraint_and_leave_free_rows_alone(reasoner):
    from conftest import he_like_tile

    from pathvlm.vlm.decode import decode_tokens

    tile = he_like_tile(0)
    inputs, _ = reasoner._prepare([tile], [{"role": "user", "content": QUESTION}])
    assert list(decode_tokens(reasoner.model, inputs, 5, [-1], constrain=ForceAlways(7))) == [7] * 5
    free = list(decode_tokens(reasoner.model, inputs, 5, [-1]))
    assert free != [7] * 5
    # generate over a left-padded batch: only the grounded row is forced
    conv = [[{"role": "user", "content": QUESTION}], [{"role": "user", "content": "Describe it."}]]
    from pathvlm.chat import normalise_messages

    texts = [reasoner._template(normalise_messages(c, 1, reasoner.limits)) for c in conv]
    batch = reasoner.processor(images=[tile, tile], text=texts, return_tensors="pt", padding=True, padding_side="left")
    width = batch["input_ids"].shape[1]
    out = reasoner.model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                  logits_processor=[GroundingLogitsProcessor([ForceAlways(9), None], width)])
    assert out[0, width:].tolist() == [9] * 4 and out[1, width:].tolist() != [9] * 4
    # through the public API, a prompt without options is untouched by ground_options
    ask = [{"role": "user", "content": "Describe it."}]
    plain = reasoner.chat([tile], ask, max_new_tokens=6)
    assert reasoner.chat([tile], ask, max_new_tokens=6, ground_options=True).text == plain.text
    assert [r.text for r in reasoner.chat_batch([tile], [ask], max_new_tokens=6, ground_options=True)] == [plain.text]


def test_serve_config_and_chat_cli_default_to_grounded_answers():
    import argparse

    from pathvlm.cli import cmd_chat
    from pathvlm.serving.config import load_serve_config

    assert load_serve_config(None).ground_options is True
    assert load_serve_config(None, ground_options=False).ground_options is False
    parser = argparse.ArgumentParser()
    cmd_chat.add_parser(parser.add_subparsers())
    assert parser.parse_args(["chat", "x.png", "q"]).ground_options is True
    assert parser.parse_args(["chat", "x.png", "q", "--no-ground-options"]).ground_options is False
    assert load_serve_config(None).ground_verdicts is True
    assert parser.parse_args(["chat", "x.png", "q"]).ground_verdicts is True
    assert parser.parse_args(["chat", "x.png", "q", "--no-ground-verdicts"]).ground_verdicts is False


def test_option_letters_benchmark_counts_by_the_correct_letter():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "option_letters.py"
    spec = importlib.util.spec_from_file_location("option_letters", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    truth = {"q1": ("A", "option_letter", "colon"), "q2": ("C", "option_letter", "colon"),
             "q3": ("C", "option_letter", "oral"), "q4": ("yes", "yes_no", "oral")}
    table = mod.by_letter({"ids": ["q1", "q2", "q3", "q4"], "correct": [1, 0, 1, 1]}, truth)
    assert table["all"]["A"] == [1, 1] and table["all"]["C"] == [1, 2] and table["oral"]["C"] == [1, 1]
    assert "yes" not in table["all"]  # yes/no questions are not counted


def test_grounded_evaluation_is_paired_with_the_ungrounded_one(tmp_path):
    import json

    from train.vlm.evaluate import output_name, pair_with_ungrounded

    raw = {"n": 4, "max_new_tokens": 160, "ids": ["a", "b", "c", "d"], "sources": ["colon"] * 2 + ["oral"] * 2,
           "correct": [1, 0, 0, 1]}
    grounded = {**raw, "correct": [1, 1, 1, 1]}
    assert output_name("test", 0.0, True) == "eval-test-grounded.json" and output_name(None, 0.0) == "eval.json"
    assert pair_with_ungrounded(tmp_path, grounded, "eval-test.json") is None  # nothing to pair with
    (tmp_path / "eval-test.json").write_text(json.dumps(raw))
    (tmp_path / "eval-test-other.json").write_text(json.dumps(raw))
    paired = pair_with_ungrounded(tmp_path, grounded, "eval-test.json")
    assert paired["comparison"]["all"]["gained"] == 2 and paired["comparison"]["all"]["lost"] == 0
    assert paired["comparison"]["oral"]["gained"] == 1
    pair_with_ungrounded(tmp_path, grounded, "eval-test-other.json", label="other")
    assert sorted(p.name for p in tmp_path.glob("paired*")) == ["paired-test-grounding-other.json",
                                                                "paired-test-grounding.json"]
    assert pair_with_ungrounded(tmp_path, {**grounded, "max_new_tokens": 80}, "eval-test.json") is None  # not the same run
    # verdict grounding on top of option grounding is paired with the options-only evaluation
    assert output_name("test", 0.0, True, True) == "eval-test-grounded-verdicts.json"
    (tmp_path / "eval-test-grounded-other.json").write_text(json.dumps(grounded))
    both = {**grounded, "correct": [1, 1, 0, 1]}
    paired = pair_with_ungrounded(tmp_path, both, "eval-test-grounded-other.json", label="other", what="verdicts")
    assert paired["after"] == "verdicts grounded" and paired["comparison"]["all"]["lost"] == 1
    # not the name of the --against comparison of eval-test-grounded-verdicts.json (paired-test-grounded-verdicts-other)
    assert (tmp_path / "paired-test-grounded-verdict-grounding-other.json").is_file()


def test_wrong_answers_picks_the_wrong_questions_of_a_source_and_kind(tmp_path):
    import importlib.util
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "wrong_answers.py"
    spec = importlib.util.spec_from_file_location("wrong_answers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "grpo").mkdir()
    rows = [{"id": f"q{i}", "answer_type": kind, "answer": "no", "label": "x"} for i, kind in
            enumerate(["yes_no", "yes_no", "option_letter", "yes_no"])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "grpo" / "test-00000-of-00001.parquet")
    ev = {"ids": ["q0", "q1", "q2", "q3"], "correct": [0, 1, 0, 0], "sources": ["oral", "oral", "oral", "colon"]}
    picked = mod.wrong_questions(ev, str(tmp_path), "test", "oral", "yes_no", 5)
    assert [r["id"] for r in picked] == ["q0"]
    assert [r["id"] for r in mod.wrong_questions(ev, str(tmp_path), "test", None, None, 2)] == ["q0", "q2"]
