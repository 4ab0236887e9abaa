"""Each GRPO reward on hand-made completions, messy ones included."""
import io

import pytest
from PIL import Image

from pathvlm.rewards import ImageAgreementReward, get_reward

GOOD = "<think>The glands are fused and cribriform with atypical nuclei.</think><answer>B</answer>"


def test_accuracy_option_letters():
    f = get_reward("accuracy")
    completions = [GOOD, "The answer is (b).", "<answer>A</answer>", "no idea", "Liver", "B) Liver"]
    opts = ["Kidney", "Liver", "Spleen", "Lung"]
    assert f(completions, answer="B", answer_type="option_letter", options=opts) == [1, 1, 0, 0, 1, 1]


def test_accuracy_yes_no_and_class():
    f = get_reward("accuracy")
    yn = ["<think>x</think><answer>Yes</answer>", "no.", "yes and no", "cannot determine", "Yes, clearly."]
    assert f(yn, answer=["yes"] * 5, answer_type="yes_no") == [1, 0, 0, 0, 1]
    cls = ["<answer>Colon adenocarcinoma.</answer>", "benign colonic tissue", "<answer>adenocarcinoma</answer>"]
    assert f(cls, answer="colon adenocarcinoma", answer_type="class") == [1, 0, 0]


def test_accuracy_abstention():
    f = get_reward("accuracy")
    done = ["<think>Blank slide.</think><answer>cannot determine</answer>", "I cannot determine this.",
            "<think>cannot determine</think><answer>B</answer>", "<answer>colon adenocarcinoma</answer>", ""]
    assert f(done, answer="cannot determine", answer_type="abstain") == [1, 1, 0, 0, 0]
    # abstaining where the image does answer the question earns nothing
    assert f(["<answer>cannot determine</answer>"] * 2, answer=["B", "yes"], answer_type=["option_letter", "yes_no"],
             options=[["a", "b"], None]) == [0, 0]


def test_accuracy_on_conversational_completions():
    f = get_reward("accuracy")
    conv = [[{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}], [{"role": "assistant", "content": "A"}]]
    assert f(conv, answer=["B", "B"], answer_type=["option_letter"] * 2, options=[["a", "b"], ["a", "b"]]) == [1, 0]


def test_format_reward():
    f = get_reward("format")
    assert f([GOOD, "<answer>B</answer>", "<think></think><answer>B</answer>", "<think>x</think><answer>B</answer> extra",
              "  <think>x</think>\n<answer>B</answer>\n"]) == [1, 0, 0, 0, 1]


def test_length_reward():
    f = get_reward("length")
    long = "<think>" + "word " * 10 + "</think><answer>" + "a " * 290 + "</answer>"
    assert f([GOOD, "<think>too short</think><answer>B</answer>", long], max_words=200) == [1.0, 0.0,
                                                                                              pytest.approx(0.5, abs=0.02)]


def test_unknown_reward():
    with pytest.raises(KeyError, match="unknown reward"):
        get_reward("nope")


def test_image_agreement_reward(tiny_clip):
    model, preprocess, tok = tiny_clip
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 100, 180)).save(buf, format="PNG")
    r = ImageAgreementReward(model, preprocess, tok)
    scores = r([GOOD, "<answer>benign</answer>"], image=buf.getvalue())
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores) and scores[0] != scores[1]


def test_consistency_reward():
    pytest.importorskip("spellchecker")
    f = get_reward("consistency")
    obs = "The glands are irregular and cribriform, lined by stratified columnar cells with loss of polarity."
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this colon adenocarcinoma? Answer yes or no."}]}]
    done = [f"<think>{obs} These features are those of colon adenocarcinoma.</think><answer>yes</answer>",
            f"<think>{obs} These features are those of colon adenocarcinoma.</think><answer>no</answer>",
            f"<think>{obs} andselectorin. These features are those of colon adenocarcinoma.</think><answer>yes</answer>",
            f"<think>{obs} andselectorin.</think><answer>benign adenocarcinoma</answer>",
            "Specimen: colon.\nDiagnosis: Adenocarcinoma of the colon."]
    got = f(done, prompts=[prompt] * 4 + [None], label=["colon adenocarcinoma"] * 4 + ["high-grade serous carcinoma"])
    assert got == [1.0, 0.5, 0.5, 0.0, 0.5]  # the last names the colon on an ovarian tile
