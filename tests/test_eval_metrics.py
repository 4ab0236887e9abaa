"""Every evaluation metric against hand-computed values; answer extraction on messy completions."""

import numpy as np
import pytest

from pathvlm.evals import answers, calibration, probe, text_metrics as tm
from pathvlm.metrics import accuracy, balanced_accuracy, class_precision_at_k, recall_at_k, weighted_f1


@pytest.mark.parametrize("text,expected", [
    ("<think>glands are fused</think><answer>B</answer>", "B"),
    ("The answer is (c).", "C"),
    ("Answer: D", "D"),
    ("B) Liver", "B"),
    ("(A)", "A"),
    ("Hepatocytes in plates, so it is liver.", "B"),  # the only option text mentioned
    ("a", "A"),
    ("I think it's either A or B", None),
    ("cannot determine", None),
    ("", None),
    ("<answer>Skeletal muscle</answer>", "A"),
])
def test_option_letter_extraction(text, expected):
    assert answers.extract_option_letter(text, ["Skeletal muscle", "Liver", "Kidney", "Spleen"]) == expected


@pytest.mark.parametrize("text,expected", [
    ("Yes", "yes"), ("yes, there is necrosis.", "yes"), ("<answer>no</answer>", "no"),
    ("<think>no atypia is seen... yes the glands</think><answer>No.</answer>", "no"),
    ("Nope", "no"), ("There is no evidence of malignancy", "no"), ("The answer is yes", "yes"),
    ("yes and no", None), ("It cannot be determined from this image", None), ("maybe", None), ("", None),
])
def test_yes_no_extraction(text, expected):
    assert answers.extract_yes_no(text) == expected


def test_normalise_and_cannot_determine():
    assert answers.normalise_answer("<answer>The Alveolar walls!</answer>") == "alveolar walls"
    assert answers.is_cannot_determine("<answer>I cannot determine this</answer>")


def test_token_metrics_by_hand():
    assert tm.exact_match("The candida organism.", "candida organism") == 1.0
    # prediction {a,b,c} vs reference {b,c,d,e}: common 2, P=2/3, R=2/4 -> F1 = 2*(2/3)(1/2)/(2/3+1/2) = 4/7
    assert tm.token_f1("alpha beta gamma", "beta gamma delta epsilon") == pytest.approx(4 / 7)
    assert tm.token_recall("alpha beta gamma", "beta gamma delta epsilon") == pytest.approx(0.5)


def test_bleu_is_sacrebleu():
    import sacrebleu

    assert tm.bleu(["a b c d"], ["a b c d"]) == pytest.approx(1.0)
    assert tm.bleu(["x y z"], ["p q r"]) == pytest.approx(0.0)
    preds, refs = ["the glands are crowded and irregular", "benign mucosa"], ["crowded irregular glands", "benign colonic mucosa"]
    assert tm.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score / 100)
    assert tm.bleu([], []) == 0.0


def test_rouge_l_by_hand():
    # rouge-score's ROUGE-L F1: LCS("a b c d e", "a c e f") = 3; P = 3/5, R = 3/4 -> F1 = 2PR/(P+R)
    p, r = 3 / 5, 3 / 4
    assert tm.rouge_l("alpha beta gamma delta epsilon", "alpha gamma epsilon zeta") == pytest.approx(2 * p * r / (p + r))
    assert tm.rouge_l("", "alpha") == 0.0


def test_chrf_is_sacrebleu():
    import sacrebleu

    assert tm.chrf("abc", "abc") == pytest.approx(1.0)
    assert tm.chrf("benign mucosa", "benign colonic mucosa") == pytest.approx(
        sacrebleu.sentence_chrf("benign mucosa", ["benign colonic mucosa"]).score / 100)
    assert 0 < tm.chrf_corpus(["benign mucosa", "tumour"], ["benign colonic mucosa", "tumour cells"]) < 1


def test_classification_metrics_by_hand():
    y, p = ["a", "a", "a", "b"], ["a", "a", "b", "b"]
    assert accuracy(y, p) == 0.75
    assert balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1) / 2)
    # F1(a) = 2*2/(2*2+0+1) = 0.8, F1(b) = 2*1/(2+1+0) = 2/3; weighted 3/4*0.8 + 1/4*2/3
    assert weighted_f1(y, p) == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)


def test_retrieval_metrics_by_hand():
    sim = np.array([[0.9, 0.1, 0.0], [0.8, 0.5, 0.1], [0.1, 0.2, 0.3]])
    assert recall_at_k(sim, 1) == pytest.approx(2 / 3)  # row 1's match ranks second
    assert recall_at_k(sim, 2) == 1.0
    assert class_precision_at_k(sim, ["x", "y", "x"], ["x", "y", "x"], 2) == pytest.approx((1 / 2 + 1 / 2 + 1 / 2) / 3)


def test_calibration_by_hand():
    conf = [0.9, 0.9, 0.6, 0.6]
    correct = [1, 0, 1, 1]
    # bin (0.8,0.9]: acc 0.5 conf 0.9 -> 0.4*0.5 ; bin (0.5,0.6]: acc 1 conf 0.6 -> 0.4*0.5
    assert calibration.expected_calibration_error(conf, correct) == pytest.approx(0.4)
    assert calibration.selective_accuracy([0.9, 0.8, 0.1], [1, 1, 0], 2 / 3) == 1.0
    assert calibration.selective_accuracy([0.9, 0.8, 0.1], [1, 1, 0], 1.0) == pytest.approx(2 / 3)


def test_linear_probe_and_few_shot():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 4)) + [3, 0, 0, 0], rng.normal(0, 1, (30, 4)) - [3, 0, 0, 0]])
    y = ["pos"] * 30 + ["neg"] * 30
    classes, predict = probe.fit_linear_probe(x, y)
    pred = [classes[i] for i in predict(x).argmax(1)]
    assert accuracy(y, pred) > 0.95
    idx = probe.few_shot_indices(y, 4, seed=1)
    assert len(idx) == 8 and idx == probe.few_shot_indices(y, 4, seed=1)


def test_robustness_index_by_hand():
    # two biologies x two sources; embeddings cluster by biology -> index > 1, by source -> < 1
    x_bio = np.array([[1, 0.01], [1, -0.01], [-1, 0.01], [-1, -0.01]])
    bio, src = ["t", "t", "n", "n"], ["s1", "s2", "s1", "s2"]
    assert probe.robustness_index(x_bio, bio, src, k=1) > 1
    assert probe.robustness_index(x_bio, ["t", "n", "t", "n"], ["s1", "s1", "s2", "s2"], k=1) < 1
