"""Verdict grounding (pathvlm.vlm.verdict_grounding): a yes/no answer agrees with the class the reasoning describes."""
from __future__ import annotations

import pytest
import torch

from pathvlm.evals.consistency import vocabulary
from pathvlm.vlm.option_grounding import groundings_for
from pathvlm.vlm.verdict_grounding import VerdictGrounding, asked_class

FORMAT = "Think step by step inside <think></think>, then give the final answer inside <answer></answer>."
ASK_OSCC = f"Is this oral squamous cell carcinoma? Answer yes or no.\n{FORMAT}"
# normal mucosa's features (the knowledge base's words: intact, basement membrane, rete ridges, matures)
NORMAL = ("<think>The surface is covered by an intact stratified squamous epithelium that matures evenly toward the "
          "surface above a smooth basement membrane with regular rete ridges.")
# carcinoma's features (keratin pearls, invasive nests breaking through, glassy cytoplasm)
SCC = ("<think>Irregular nests and islands of atypical squamous cells invade the stroma, breaking through the basement "
       "membrane; several contain concentric keratin pearls with glassy pink cytoplasm.")
VAGUE = "<think>There are cells."


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE that, like SmolLM2's, has " those", " not", "yes" and "no" as single tokens."""
    from conftest import byte_level_bpe

    endings = [" These features are those of oral squamous cell carcinoma.</think><answer>yes</answer>",
               " These features are not those of oral squamous cell carcinoma.</think><answer>no</answer>"]
    return byte_level_bpe([r + e for r in (NORMAL, SCC, VAGUE) for e in endings] * 20 + [ASK_OSCC] * 5, 600)


def _one(tok, text):
    ids = tok.encode(text)
    assert len(ids) == 1, text
    return ids[0]


def test_asked_class_reads_one_class_of_a_yes_no_question():
    v = vocabulary()
    assert asked_class(ASK_OSCC, v) == "oral squamous cell carcinoma"
    assert asked_class("Is this benign colonic tissue? Answer yes or no.", v) == "benign colonic tissue"
    assert asked_class("Is this oral squamous cell carcinoma?", v) is None  # not a yes/no prompt
    assert asked_class("Is this a lymphoma? Answer yes or no.", v) is None  # no class of the knowledge base
    assert asked_class("What does this image show?", v) is None


def test_the_verdict_follows_the_description(tokenizer):
    g = VerdictGrounding.for_prompt(tokenizer, ASK_OSCC)
    those, not_ = _one(tokenizer, " those"), _one(tokenizer, " not")
    # described normal mucosa, asked about carcinoma: "not"; described carcinoma: "those"
    assert g.forced(tokenizer.encode(NORMAL + " These features are")) == not_
    assert g.forced(tokenizer.encode(SCC + " These features are")) == those
    assert g.forced(tokenizer.encode(VAGUE + " These features are")) is None  # the description points nowhere
    assert g.forced(tokenizer.encode(NORMAL + " These features")) is None
    assert g.forced([]) is None
    logits = torch.zeros(1, len(tokenizer))
    masked = g.apply(tokenizer.encode(NORMAL + " These features are"), logits)
    assert masked.argmax().item() == not_ and torch.isinf(masked).sum() == len(tokenizer) - 1


def test_the_answer_follows_the_verdict_sentence(tokenizer):
    g = VerdictGrounding.for_prompt(tokenizer, ASK_OSCC)
    yes, no = _one(tokenizer, "yes"), _one(tokenizer, "no")
    end = ".</think><answer>"
    assert g.forced(tokenizer.encode(VAGUE + " These features are those of oral squamous cell carcinoma" + end)) == yes
    assert g.forced(tokenizer.encode(VAGUE + " These features are not those of oral squamous cell carcinoma" + end)) == no
    # a verdict about another class than the one asked: affirming it answers no; denying it decides nothing
    assert g.forced(tokenizer.encode(VAGUE + " These features are those of normal oral mucosa" + end)) == no
    assert g.forced(tokenizer.encode(VAGUE + " These features are not those of normal oral mucosa" + end)) is None
    assert g.forced(tokenizer.encode(VAGUE + "</think><answer>")) is None  # no verdict sentence


def test_groundings_for_picks_the_rule_by_the_prompt(tokenizer):
    mcq = "Which diagnosis best fits this H&E image?\nA. normal oral mucosa\nB. oral squamous cell carcinoma"
    conv = [[{"role": "user", "content": ASK_OSCC}], [{"role": "user", "content": mcq}],
            [{"role": "user", "content": "Describe it."}]]
    kinds = [type(g).__name__ if g else None for g in groundings_for(tokenizer, conv, True, True)]
    assert kinds == ["VerdictGrounding", "OptionGrounding", None]
    assert [g is None for g in groundings_for(tokenizer, conv, True, False)] == [True, False, True]
    assert [g is None for g in groundings_for(tokenizer, conv, False, True)] == [False, True, True]


def test_verdict_grounding_benchmark_pairs_and_counts():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "verdict_grounding.py"
    spec = importlib.util.spec_from_file_location("verdict_grounding_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    v = vocabulary()
    assert mod.decided(NORMAL + " These features are those of oral squamous cell carcinoma.", ASK_OSCC, v)
    assert not mod.decided(VAGUE + " These features are those of oral squamous cell carcinoma.", ASK_OSCC, v)
    assert not mod.decided(NORMAL + " These features are those of it.", "Describe it.", v)
    table = mod.summarise(["oral", "oral", "colon", "colon"], [0, 1, 1, 0], [1, 1, 1, 0],
                          [True, False, False, False], [True, True, False, False])
    assert table["all"]["gained"] == 1 and table["all"]["lost"] == 0 and table["all"]["accuracy_after"] == 0.75
    assert table["oral"]["decided"] == 2 and table["colon"]["answers_changed"] == 0
