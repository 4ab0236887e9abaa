"""Self-consistency of generated answers (pathvlm.evals.consistency): the texts of issue 16 are flagged,
and every consistent text the nano recipe trains on (captions, reports, yes/no, MCQ, open answers, for
every class of the knowledge base) passes."""
import pytest

from pathvlm.data.builders import build_sft
from pathvlm.data.knowledge import KnowledgeBase
from pathvlm.evals.consistency import REASONS, check, consistency_metrics, options_in, vocabulary

KB = KnowledgeBase.load()

# issue 16's own examples
OSCC_REPORT = ("Specimen: colon, H&E-stained section.\nMicroscopic description: Infiltrating irregular glands lined by "
               "atypical columnar epithelium with loss of polarity andselectorin.\nDiagnosis: Adenocarcinoma of the colon.")
EITHER_OR = ("<think>The glands are irregular, fused and cribriform, lined by stratified columnar cells. These features are "
             "not those of benign tissue.</think><answer>Is it benign or malignant? No, it is not.</answer>")
BENIGN_ADENO = ("<think>The glands are irregular and cribriform with loss of polarity.</think>"
                "<answer>These features are those of benign adenocarcinoma of the glands.</answer>")
DENIES = ("The glands are irregular in size and shape and some are fused or cribriform. The lining cells are stratified "
          "with enlarged, elongated, hyperchromatic nuclei. These features are not those of adenocarcinoma.")


def test_issue_examples_are_flagged():
    r = check(OSCC_REPORT, organ="oral mucosa")
    assert "wrong_organ" in r.reasons and r.diagnosis == "Adenocarcinoma of the colon."
    assert "either_or_answered_yes_no" in check(EITHER_OR, organ="colon").reasons
    assert "self_contradiction" in check(BENIGN_ADENO, organ="colon").reasons
    r = check(DENIES, organ="colon")
    assert "denies_described" in r.reasons and r.described == "colon adenocarcinoma"
    # the same report on a colon tile is consistent
    assert check(OSCC_REPORT, organ="colon").consistent


def test_reasoning_and_answer_disagree():
    obs = KB.observations("colon adenocarcinoma")
    q = "Is this benign colonic tissue? Answer yes or no."
    # the reasoning says "not benign", the answer says yes to benign
    r = check(f"<think>{obs} These features are not those of benign colonic tissue.</think><answer>yes</answer>", q)
    assert "reasoning_vs_answer" in r.reasons and r.asked == "benign colonic tissue"
    # the reasoning names one class, the final answer another
    r = check(f"<think>{obs} These features are those of colon adenocarcinoma.</think><answer>benign colonic tissue</answer>")
    assert "reasoning_vs_answer" in r.reasons
    # MCQ: the reasoning picks one option, the letter another
    mcq = "Which diagnosis best fits this H&E image?\nA. benign colonic tissue\nB. colon adenocarcinoma\nC. lymphoma"
    r = check(f"<think>{obs} This fits colon adenocarcinoma, which is option B.</think><answer>A</answer>", mcq,
              options_in(mcq))
    assert "reasoning_vs_answer" in r.reasons and r.option_class == "benign colonic tissue"
    assert check(f"<think>{obs} This fits colon adenocarcinoma, which is option B.</think><answer>B</answer>", mcq,
                 options_in(mcq)).consistent
    # describing adenocarcinoma, then answering no to it
    r = check(f"<think>{obs}</think><answer>no</answer>", "Is this colon adenocarcinoma? Answer yes or no.")
    assert "denies_described" in r.reasons


def test_report_lines_disagree():
    rep = ("Specimen: ovary, H&E-stained section.\nMicroscopic description: Regular, evenly spaced crypts lined by goblet "
           "cells with small basal nuclei and preserved polarity.\nDiagnosis: Adenocarcinoma of the colon.")
    r = check(rep)
    assert "report_mismatch" in r.reasons
    assert "wrong_organ" in check(rep, organ="colon").reasons


@pytest.mark.parametrize("text", [
    "These features are not those of adenocarcinoma; the crypts are regular.",
    "No malignancy is seen. Benign colonic mucosa.",
    "Adenocarcinoma of the colon, not benign colonic tissue.",
    "Colon adenocarcinoma rather than benign colonic tissue.",
    "Benign or malignant: malignant, an adenocarcinoma.",
])
def test_negation_and_alternatives_are_not_contradictions(text):
    assert "self_contradiction" not in check(text).reasons


def test_negation_scope():
    from pathvlm.evals.consistency import claims

    v = vocabulary()
    c = claims("These features are not those of benign colonic tissue but of colon adenocarcinoma.", v)
    assert c.denied == {"benign colonic tissue"} and c.classes == {"colon adenocarcinoma"}
    c = claims("Benign colonic mucosa; no dysplasia or malignancy.", v)
    assert c.verdicts == {"benign"} and c.denied_verdicts == {"malignant"}
    c = claims("Adenocarcinoma is not seen.", v)
    assert c.denied == {"colon adenocarcinoma"} and not c.classes


def _sft_texts(label: str, n: int = 12):
    rows = [{"id": f"{label}-{i}", "task": "classification", "image": b"x", "label": label, "source": "s",
             "licence": "l", "group": f"g{i}", "split": "test"} for i in range(n)]
    for ex in build_sft(rows, KB, seed=0):
        q = ex["messages"][0]["content"][-1]["text"]
        a = ex["messages"][1]["content"][0]["text"]
        yield ex["task"], q, a


@pytest.mark.parametrize("label", list(KB.classes))
def test_training_targets_are_consistent(label):
    """No false positives on the texts the model is trained to write, for every class the KB knows."""
    organ = KB.entry(label)["organ"]
    import random

    texts = [(None, KB.report(label)), (None, KB.observations(label))]
    texts += [(None, KB.caption(label, random.Random(i))) for i in range(20)]
    texts += [(q, a) for _, q, a in _sft_texts(label)]
    for q, t in texts:
        r = check(t, q, options_in(q), organ)
        assert r.consistent, (label, q, t, r.summary())


def test_vocabulary_extends_with_the_knowledge_base():
    data = {"caption_templates": ["{description}"], "organs": {"oral mucosa": ["oral", "buccal"]},
            "classes": {
                "oral squamous cell carcinoma": {
                    "organ": "oral mucosa", "stain": "H&E", "malignant": True,
                    "synonyms": ["OSCC", "squamous cell carcinoma of the oral cavity"],
                    "descriptions": ["invasive nests of atypical squamous cells with keratin pearls and dyskeratosis"],
                    "observations": ["Keratin pearls and intercellular bridges are seen in invasive nests."],
                    "report": {"diagnosis": "Oral squamous cell carcinoma.", "microscopy": "Invasive squamous nests."}},
                "normal oral mucosa": {
                    "organ": "oral mucosa", "stain": "H&E", "malignant": False,
                    "synonyms": ["benign oral mucosa"],
                    "descriptions": ["orderly stratified squamous epithelium with maturation towards the surface"],
                    "observations": ["The epithelium matures in an orderly way."],
                    "report": {"diagnosis": "Normal oral mucosa.", "microscopy": "Orderly stratified squamous epithelium."}}}}
    v = vocabulary(KnowledgeBase(data))
    assert v.terms["squamous cell carcinoma"].label == "oral squamous cell carcinoma"
    r = check("<think>Keratin pearls, dyskeratosis and intercellular bridges.</think><answer>Benign oral mucosa</answer>",
              vocab=v)
    assert "reasoning_vs_answer" in r.reasons
    assert check("Specimen: oral mucosa.\nDiagnosis: Oral squamous cell carcinoma.", organ="oral mucosa", vocab=v).consistent


def test_metrics_count_reasons():
    m = consistency_metrics([OSCC_REPORT, KB.report("colon adenocarcinoma"), BENIGN_ADENO],
                            organs=["oral mucosa", "colon", "colon"])
    assert m["n"] == 3 and m["inconsistent_rate"] == pytest.approx(2 / 3)
    assert m["reasons"]["wrong_organ"] == 1 and m["reasons"]["self_contradiction"] == 1
    assert m["wrong_organ_rate"] == pytest.approx(1 / 3) and set(m["reasons"]) == set(REASONS)
    assert [e["id"] for e in m["examples"]] == ["0", "2"]
    assert consistency_metrics([])["inconsistent_rate"] == 0.0


# pathvlm-nano v2's own answer on an oral tile (colon_oral_open): the stroma's "chronic inflammatory infiltrate" is
# a finding of oral squamous cell carcinoma in the knowledge base, and "inflammatory infiltrate" is also a class
OSCC_OPEN = ("<think>At low power irregular nests and islands of squamous epithelium infiltrate the stroma. The orderly "
             "maturation of the surface epithelium is lost and the epithelial-stromal junction is broken. Several nests "
             "have central keratin pearls of concentric pink keratin. The surrounding stroma shows a desmoplastic "
             "reaction with a chronic inflammatory infiltrate.</think><answer>oral squamous cell carcinoma</answer>")


def test_a_class_named_as_a_finding_of_the_answered_class_is_not_the_reasonings_diagnosis():
    r = check(OSCC_OPEN, organ="oral mucosa")
    assert r.consistent and r.reasoning.classes == set(), r.summary()
    # the same words concluded as a diagnosis still disagree with the answer
    for end in (" This fits inflammatory infiltrate.", " These features are those of inflammatory infiltrate.",
                " The diagnosis is inflammatory infiltrate."):
        r = check(OSCC_OPEN.replace("</think>", end + "</think>"), organ="oral mucosa")
        assert "reasoning_vs_answer" in r.reasons and r.reasoning.classes == {"inflammatory infiltrate"}, end
    # a finding of the answered class only: the same description answered as normal mucosa stays inconsistent
    r = check(OSCC_OPEN.replace("oral squamous cell carcinoma</answer>", "normal oral mucosa</answer>"),
              organ="oral mucosa")
    assert not r.consistent
    # a report: the inflamed stroma in the description does not contradict the diagnosis line
    rep = ("<think>" + OSCC_OPEN.split("<think>")[1].split("</think>")[0] + "</think><answer>Specimen: oral mucosa, "
           "H&E-stained section (100x).\nMicroscopic description: Invasive nests of keratinising squamous epithelium "
           "with keratin pearls and a chronic inflammatory infiltrate in the stroma.\nDiagnosis: Invasive squamous cell "
           "carcinoma of the oral mucosa.</answer>")
    assert check(rep, organ="oral mucosa").consistent


def test_findings_masked_keeps_length_and_only_blanks_findings_of_the_answered_class():
    from pathvlm.evals.consistency import findings_masked

    v = vocabulary()
    text = "The stroma shows a chronic inflammatory infiltrate. This fits inflammatory infiltrate."
    masked = findings_masked(text, {"oral squamous cell carcinoma"}, v)
    assert len(masked) == len(text) and masked.count("inflammatory infiltrate") == 1
    assert masked.endswith("This fits inflammatory infiltrate.")
    assert findings_masked(text, {"colon adenocarcinoma"}, v) == text  # not a finding of colon adenocarcinoma
    assert findings_masked(text, set(), v) == text
