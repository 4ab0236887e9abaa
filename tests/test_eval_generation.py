"""Reasoner evaluation: each scoring function against hand-computed values, then every generative task
kind end to end with the real tiny reasoner (tiny_reasoner_dir) on fixtures in the datasets' layouts."""
import json
import math

import numpy as np
import pytest
import yaml
from PIL import Image

from evals.generative import question_text, run_generative
from evals.runner import run_eval
from evals.tasks import Task, load_task
from pathvlm.cli import main
from pathvlm.cli.cmd_eval import resolve_models
from pathvlm.evals import generation as g

OPTIONS = ["colon adenocarcinoma", "benign colonic tissue"]


@pytest.mark.parametrize("text,kind,expected", [
    ("<think>fused glands</think><answer>Colon adenocarcinoma.</answer>", "class", "colon adenocarcinoma"),
    ("this is benign colonic tissue, not a carcinoma", "class", "benign colonic tissue"),
    ("adenocarcinoma", "class", None),  # names no option in full
    ("colon adenocarcinoma or benign colonic tissue", "class", None),  # names both
    ("<answer>B</answer>", "option_letter", "B"),
    ("Yes, there is necrosis.", "yes_no", "yes"),
    ("<answer>The Alveolar walls</answer>", "open", "alveolar walls"),
    ("", "open", None),
])
def test_extract_answer(text, kind, expected):
    assert g.extract_answer(text, kind, OPTIONS) == expected


def test_closed_metrics_by_hand():
    m = g.closed_metrics(["A", "yes", None, "no"], ["a", "No", "B", "no"],
                         ["option_letter", "yes_no", "option_letter", "yes_no"])
    assert m["accuracy"] == 0.5 and m["accuracy_option_letter"] == 0.5 and m["accuracy_yes_no"] == 0.5
    assert m["unreadable_rate"] == 0.25 and m["n"] == 4 and m["n_yes_no"] == 2


def test_open_and_caption_metrics_by_hand():
    m = g.open_metrics(["<answer>the candida</answer>", "alpha beta gamma"], ["candida", "beta gamma delta epsilon"])
    assert m["exact_match"] == 0.5
    assert m["token_recall"] == pytest.approx((1 + 0.5) / 2)
    assert m["token_f1"] == pytest.approx((1 + 4 / 7) / 2)  # second: P 2/3, R 1/2
    c = g.caption_metrics(["<think>x y</think><answer>a b c d</answer>"], ["a b c d"])
    assert c["bleu4"] == pytest.approx(1.0) and c["rouge_l"] == pytest.approx(1.0) and c["chrf"] == pytest.approx(1.0)


def test_answer_distribution_measures_by_hand():
    assert g.answer_entropy(["yes", "yes", "no", "no"]) == pytest.approx(1.0)
    assert g.answer_entropy(["yes"] * 4) == 0.0
    assert g.answer_entropy(["A", "B", "C", "D"]) == pytest.approx(2.0)
    assert g.answer_entropy([None, None, "yes", "yes"]) == pytest.approx(1.0)  # unreadable is one category
    # p = (3/4, 1/4): -(0.75 log2 0.75 + 0.25 log2 0.25)
    assert g.answer_entropy(["no", "no", "no", "yes"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert g.modal_share(["yes", "yes", "yes", "no"]) == 0.75
    assert g.change_rate(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 0.5


def test_clip_consistency_by_hand():
    t = np.array([[1.0, 0.0], [0.0, 2.0]])
    i = np.array([[3.0, 0.0], [1.0, 1.0]])
    assert g.clip_consistency(t, i) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)


def test_controls_images_are_seeded_and_shuffles_have_no_fixed_point():
    for n in (2, 3, 7, 50):
        p = g.shuffled_indices(n, seed=3)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
        assert p == g.shuffled_indices(n, seed=3)
    a, b = np.asarray(g.noise_image(1, (8, 8))), np.asarray(g.noise_image(1, (8, 8)))
    assert (a == b).all() and not (a == np.asarray(g.noise_image(2, (8, 8)))).all()
    assert np.asarray(g.blank_image((4, 4))).min() == 255


def test_mcq_prompt_in_pathmmu_format():
    task = Task(name="t", kind="mcq", dataset={})
    q = question_text({"question": "Which organ?", "options": ["Liver", "Kidney"], "answer_type": "option_letter"}, task)
    assert q == "Which organ?\n(A) Liver\n(B) Kidney\nAnswer with the option's letter from the given choices directly."


class CannedReasoner:
    """A stand-in for scoring only: answers from the image's mean brightness, or always 'yes' when blind."""

    def __init__(self, blind: bool):
        self.blind = blind

    def chat(self, images, messages, **kw):
        bright = np.asarray(images[0]).mean() > 127
        return type("R", (), {"text": "<answer>yes</answer>" if self.blind or bright else "<answer>no</answer>"})()


def test_controls_tell_an_image_blind_model_from_one_that_looks():
    items = [{"id": str(k), "image": g.png_bytes(Image.new("RGB", (16, 16), (200,) * 3 if k % 2 else (20,) * 3)),
              "question": "Is it bright?", "answer": "yes" if k % 2 else "no", "answer_type": "yes_no", "options": []}
             for k in range(8)]
    task = Task(name="t", kind="vqa_closed", dataset={})
    blind = run_generative(task, CannedReasoner(blind=True), items, None)
    looks = run_generative(task, CannedReasoner(blind=False), items, None)
    assert blind["closed"]["accuracy"] == 0.5 and looks["closed"]["accuracy"] == 1.0
    assert blind["controls"]["blank"]["answer_change_rate"] == 0.0 and blind["controls"]["noise"]["answer_entropy_bits"] == 0.0
    # white image: all 'yes', so the 4 dark tiles change; shuffled: every other tile's brightness
    assert looks["controls"]["blank"]["answer_change_rate"] == 0.5 and looks["controls"]["blank"]["modal_share"] == 1.0
    assert looks["controls"]["shuffled"]["answer_change_rate"] > 0


def test_closed_accuracy_per_organ_on_a_two_organ_task():
    labels = ["colon adenocarcinoma", "oral squamous cell carcinoma"]
    items = [{"id": str(k), "image": g.png_bytes(Image.new("RGB", (16, 16), (200,) * 3 if k % 2 else (20,) * 3)),
              "question": "Is it bright?", "answer": "yes" if k % 2 else "no", "answer_type": "yes_no", "options": [],
              "label": labels[k // 4]} for k in range(8)]
    task = Task(name="t", kind="vqa_closed", dataset={}, settings={"controls": []})
    looks = run_generative(task, CannedReasoner(blind=False), items[:3] + items[4:], None)["closed"]
    assert looks["by_organ"]["colon"]["n"] == 3 and looks["by_organ"]["oral mucosa"]["n"] == 4
    blind = run_generative(task, CannedReasoner(blind=True), items, None)["closed"]
    assert blind["by_organ"]["colon"]["accuracy"] == 0.5 and blind["by_organ"]["oral mucosa"]["accuracy_yes_no"] == 0.5
    one = run_generative(task, CannedReasoner(blind=True), items[:4], None)["closed"]
    assert "by_organ" not in one  # one organ: the overall figures are its figures


def test_cli_picks_the_reasoner_per_task_kind():
    zs, qa = load_task("lc25000_colon_zeroshot"), load_task("lc25000_colon_closed_qa")
    assert resolve_models("my-vlm", None, [qa]) == (None, "my-vlm")
    assert resolve_models(None, None, [zs, qa]) == ("pathclip-nano", "pathvlm-nano")
    assert resolve_models("clip", "vlm", [zs, qa]) == ("clip", "vlm")
    assert resolve_models("clip", None, [zs]) == ("clip", None)


# --- end to end with the real tiny reasoner ---------------------------------------------------------

@pytest.fixture()
def built_tasks(recipe_dir, tmp_path, tiny_clip_dir):
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    recipe.splits.ratios = {"train": 0.6, "test": 0.4}
    build_recipe(recipe, recipe_dir / "data", progress=False)
    base = {"kind": "built", "build_dir": str(recipe_dir / "data"), "split": "test"}
    specs = {
        "qa": {"kind": "closed_qa", "dataset": {**base, "dataset": "grpo", "answer_types": ["option_letter", "yes_no"]},
               "decoding": {"max_new_tokens": 24}, "settings": {"controls_max_samples": 4}},
        "cap": {"kind": "caption", "clip_model": str(tiny_clip_dir), "dataset": {**base, "dataset": "align", "tasks": ["caption"]},
                "decoding": {"max_new_tokens": 16}},
        "rep": {"kind": "report", "clip_model": str(tiny_clip_dir), "dataset": {**base, "dataset": "align", "tasks": ["report"]},
                "decoding": {"max_new_tokens": 16}},
    }
    paths = []
    for name, spec in specs.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({"name": name, "description": "d", "source": "s", **spec}))
        paths.append(str(p))
    return paths


def test_closed_qa_caption_and_report_with_the_tiny_reasoner_repeat_exactly(tiny_reasoner_dir, built_tasks, tmp_path):
    a = run_eval(None, built_tasks, tmp_path / "a", reasoner=str(tiny_reasoner_dir))
    run_eval(None, built_tasks, tmp_path / "b", reasoner=str(tiny_reasoner_dir))
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    qa = a["tasks"]["qa"]["metrics"]
    assert qa["decoding"] == {"max_new_tokens": 24, "temperature": 0.0, "top_p": 1.0, "seed": 0, "batch_size": 16}
    assert 0 <= qa["closed"]["accuracy"] <= 1 and {"accuracy_option_letter", "accuracy_yes_no"} <= set(qa["closed"])
    assert set(qa["controls"]) == {"n", "original", "blank", "noise", "shuffled"} and qa["controls"]["n"] == 4
    assert qa["examples"][0]["completion"]  # the tiny model writes text
    cap = a["tasks"]["cap"]["metrics"]
    assert {"bleu4", "rouge_l", "chrf", "clip_consistency", "clip_consistency_reference"} <= set(cap)
    assert -1 <= cap["clip_consistency"] <= 1 and a["tasks"]["rep"]["metrics"]["n"] > 0
    assert a["reasoner_fingerprint"] and "model" not in a  # no PathCLIP task: none loaded at top level
    page = (tmp_path / "a" / "report.html").read_text()
    assert "Image-dependence controls" in page and "Decoding:" in (tmp_path / "a" / "report.md").read_text()


def write_pathvqa(root, images=True):
    (root / "images" / "test").mkdir(parents=True)
    data = []
    for k in range(3):
        img = f"test_{k:04d}"
        if images:
            Image.new("RGB", (64, 64), (180, 60 + 40 * k, 150)).save(root / "images" / "test" / f"{img}.jpg")
        data.append({"img_id": img, "sentf": {"pvqa": ["is this necrosis?", "what is present?"]},
                     "labelf": {"pvqa": [{"yes" if k % 2 else "no": 1}, {"candida organisms": 1}]}})
    (root / "pvqa_test.json").write_text(json.dumps(data))


def test_pathvqa_tasks_on_a_fixture_in_the_release_layout(tiny_reasoner_dir, tmp_path, monkeypatch):
    write_pathvqa(tmp_path / "pvqa")
    monkeypatch.setenv("PATHVQA", str(tmp_path / "pvqa"))
    res = run_eval(None, ["pathvqa_closed", "pathvqa_open"], tmp_path / "out", reasoner=str(tiny_reasoner_dir))
    closed, opened = res["tasks"]["pathvqa_closed"]["metrics"], res["tasks"]["pathvqa_open"]["metrics"]
    assert closed["closed"]["n"] == 3 and "open" not in closed and closed["controls"]["n"] == 3
    assert opened["open"]["n"] == 3 and set(opened["open"]) == {"exact_match", "token_recall", "token_f1", "n"}
    assert "Answer yes or no." in closed["examples"][0]["question"]


def test_text_only_corpus_runs_blind_with_stand_in_images(tiny_reasoner_dir, tmp_path, monkeypatch):
    write_pathvqa(tmp_path / "text" / "pathvqa", images=False)
    (tmp_path / "README.md").write_text("shared")
    monkeypatch.setenv("PATHVLM_SHARED_DATA", str(tmp_path))
    res = run_eval(None, ["pathvqa_text_blind"], tmp_path / "out", reasoner=str(tiny_reasoner_dir))
    m = res["tasks"]["pathvqa_text_blind"]["metrics"]
    assert "blank stand-ins" in m["images"] and m["closed"]["n"] == 3 and m["open"]["n"] == 3 and "controls" not in m


def test_pathmmu_and_quilt_vqa_and_arch_on_fixtures(tiny_reasoner_dir, tmp_path, monkeypatch):
    root = tmp_path / "pathmmu"
    (root / "images").mkdir(parents=True)
    items = []
    for k in range(3):
        Image.new("RGB", (64, 64), (200, 100, 150 + 20 * k)).save(root / "images" / f"{k}.jpg")
        items.append({"question": "Which tissue is shown?", "options": ["A) liver", "B) kidney", "C) colon"],
                      "answer": "C) colon", "explanation": "glands", "img": f"images/{k}.jpg"})
    (root / "data.json").write_text(json.dumps({"PubMed": {"test": items, "val": items[:1]}}))
    quilt = tmp_path / "quilt"
    (quilt / "images").mkdir(parents=True)
    rows = []
    for k in range(2):
        Image.new("RGB", (64, 64), (150, 80, 170)).save(quilt / "images" / f"q{k}.jpg")
        rows.append({"question_id": k, "image": f"q{k}.jpg", "text": "Is there fibrosis?" if k else "What cells are seen?",
                     "answer": "yes" if k else "plasma cells", "answer_type": "closed" if k else "open"})
    (quilt / "quiltvqa_test_w_ans.json").write_text(json.dumps(rows))
    arch = tmp_path / "arch"
    (arch / "books_set" / "images").mkdir(parents=True)
    caps = {}
    for k in range(2):
        Image.new("RGB", (64, 64), (190, 90, 160)).save(arch / "books_set" / "images" / f"u{k}.png")
        caps[str(k)] = {"caption": "Granulomas with giant cells.", "uuid": f"u{k}", "figure_id": str(k), "letter": "Single"}
    (arch / "books_set" / "captions.json").write_text(json.dumps(caps))
    for var, path in (("PATHMMU", root), ("QUILT_VQA", quilt), ("ARCH", arch)):
        monkeypatch.setenv(var, str(path))
    res = run_eval(None, ["pathmmu_mcq", "quilt_vqa", "arch_caption"], tmp_path / "out", reasoner=str(tiny_reasoner_dir))
    mmu = res["tasks"]["pathmmu_mcq"]["metrics"]
    assert mmu["closed"]["n"] == 3 and "(C) colon" in mmu["examples"][0]["question"]
    qv = res["tasks"]["quilt_vqa"]["metrics"]
    assert qv["closed"]["n"] == 1 and qv["open"]["n"] == 1
    assert res["tasks"]["arch_caption"]["metrics"]["n"] == 2


def test_batched_answers_equal_one_at_a_time(tiny_reasoner_dir, built_tasks):
    from evals.data import load_split
    from evals.generative import _ask, _pil, qa_items
    from pathvlm.chat import load_reasoner

    task = load_task(built_tasks[0])
    items = qa_items(task, load_split(task.dataset, "test"))[:6]
    images, questions = [_pil(it["image"]) for it in items], [question_text(it, task) for it in items]
    r = load_reasoner(str(tiny_reasoner_dir))
    dec = {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    assert _ask(r, images, questions, {**dec, "batch_size": 4}) == _ask(r, images, questions, {**dec, "batch_size": 1})


def test_cli_runs_a_generative_task_with_model_as_the_reasoner(tiny_reasoner_dir, built_tasks, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_reasoner_dir), "--tasks", built_tasks[0], "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["reasoner"] == str(tiny_reasoner_dir) and res["tasks"]["qa"]["kind"] == "closed_qa"
    assert (tmp_path / "o" / "report.html").exists()


class ScriptedReasoner:
    """Answers each question with the next canned text (one request at a time)."""

    def __init__(self, texts):
        self.texts = list(texts)

    def chat(self, images, conversation, stream=False, **kw):
        return type("R", (), {"text": self.texts.pop(0)})()


def _png():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 180)).save(buf, format="PNG")
    return buf.getvalue()


def test_self_consistency_and_garbled_words_in_the_results(tmp_path):
    from pathvlm.data.knowledge import KnowledgeBase

    kb = KnowledgeBase.load()
    texts = [kb.report("colon adenocarcinoma"),  # consistent, on a colon tile
             kb.report("colon adenocarcinoma").replace("loss of polarity", "loss of polarity andselectorin"),
             kb.report("colon adenocarcinoma")]  # on an oral tile: the wrong organ
    items = [{"id": f"t{k}", "image": _png(), "label": lb, "answer": "", "text": "", "question": "", "options": []}
             for k, lb in enumerate(["colon adenocarcinoma", "colon adenocarcinoma", "oral squamous cell carcinoma"])]
    task = Task(name="rep", kind="report", dataset={},
                settings={"reference_free": True, "organ": "oral mucosa", "prompt": "Write a report."},
                decoding={"batch_size": 1})
    m = run_generative(task, ScriptedReasoner(texts), items, tmp_path, completions=tmp_path / "c" / "rep.jsonl")
    assert m["consistency"]["inconsistent_rate"] == pytest.approx(1 / 3)
    import json

    lines = [json.loads(x) for x in (tmp_path / "c" / "rep.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["t0", "t1", "t2"] and [x["completion"] for x in lines] == texts
    assert [x["inconsistent"] for x in lines] == [[], [], ["wrong_organ"]] and lines[2]["organ"] == "oral mucosa"
    assert m["consistency"]["reasons"]["wrong_organ"] == 1 and m["consistency"]["examples"][0]["id"] == "t2"
    assert m["garbled"]["top"] == [["andselectorin", 1]] and m["garbled_word_rate"] > 0
    assert m["references"].startswith("none") and "bleu4" not in m


def test_open_questions_from_the_sft_split_and_max_samples(tiny_reasoner_dir, recipe_dir, tmp_path):
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    from evals.markdown_report import render_report

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    recipe.splits.ratios = {"train": 0.6, "test": 0.4}
    build_recipe(recipe, recipe_dir / "data", progress=False)
    spec = {"name": "op", "kind": "vqa_open", "description": "d", "source": "s", "decoding": {"max_new_tokens": 16},
            "dataset": {"kind": "built", "build_dir": str(recipe_dir / "data"), "dataset": "sft", "split": "test",
                        "tasks": ["open"]}}
    p = tmp_path / "op.yaml"
    p.write_text(yaml.safe_dump(spec))
    res = run_eval(None, [str(p)], tmp_path / "out", reasoner=str(tiny_reasoner_dir), max_samples=2,
                   grounding={"ground_options": False, "ground_verdicts": True})
    r = res["tasks"]["op"]
    assert r["n_samples"] == 2 and r["max_samples"] == 2
    m = r["metrics"]
    assert m["decoding"]["ground_verdicts"] is True and "ground_options" not in m["decoding"]  # recorded as run
    assert m["open"]["n"] == 2 and m["consistency"]["n"] == 2 and 0 <= m["garbled_word_rate"] <= 1
    assert "tokenizer whole-word tokens" in m["garbled"]["lexicon"]
    assert "consistency / inconsistent_rate" in render_report(res) and "garbled_word_rate" in render_report(res)
    with pytest.raises(Exception, match="at least 1"):
        run_eval(None, [str(p)], tmp_path / "o2", reasoner=str(tiny_reasoner_dir), max_samples=0)


def test_grounding_reaches_the_reasoner_only_when_asked():
    from types import SimpleNamespace

    from evals.generative import DEFAULT_DECODING, _ask

    class Recorder:
        def __init__(self):
            self.calls = []

        def chat_batch(self, images, conversations, batch_size, **kw):
            self.calls.append(kw)
            return [SimpleNamespace(text="<answer>yes</answer>")] * len(images)

    r = Recorder()
    _ask(r, [None], ["Is this x? Answer yes or no."], dict(DEFAULT_DECODING))
    _ask(r, [None], ["q"], {**DEFAULT_DECODING, "ground_verdicts": True, "ground_options": False})
    assert "ground_options" not in r.calls[0] and "ground_verdicts" not in r.calls[0]  # other reasoners' signatures
    assert r.calls[1]["ground_verdicts"] is True and "ground_options" not in r.calls[1]
