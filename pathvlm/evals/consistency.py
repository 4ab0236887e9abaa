"""Self-consistency of one generated answer: does the reasoning name the class the answer gives?

From one completion (``<think>reasoning</think><answer>answer</answer>``, or a structured report with
``Specimen:`` / ``Microscopic description:`` / ``Diagnosis:`` lines) :func:`check` reads

- the classes the reasoning names (affirmed or negated) and the class its features describe;
- the verdict of the answer: a class or benign/malignant, or yes/no to the class the question asks
  about, or the class of the chosen option;
- the report's diagnosis line and the organs the text names;

and lists why the answer is inconsistent (:data:`REASONS`): the reasoning and the answer disagree,
the text denies the class it has just described, a phrase such as "benign adenocarcinoma" contradicts
itself, an either-or question is answered "No, it is not.", or the text names an organ other than the
tile's. Consistency is not correctness: a wrong diagnosis argued consistently passes.

A class name can also be a finding: "a chronic inflammatory infiltrate" in the stroma is part of what oral
squamous cell carcinoma looks like, and "inflammatory infiltrate" is a class of its own. A mention of
another class whose name the answered class's own knowledge-base descriptions use is read as a finding, not
as the reasoning's diagnosis, unless the sentence concludes with it ("This fits ...", "consistent with ...",
"those of ...": :data:`CONCLUSION`).

The vocabulary comes from the morphology knowledge base (``pathvlm/data/knowledge/morphology.json``):
class names, synonyms and diagnosis lines name classes; their words with the organ words removed
("adenocarcinoma" from "colon adenocarcinoma") name them too, when no other class's text uses them;
words found in one class's descriptions only are its features; the ``organs`` table lists the words
that name each organ. A new organ or class in the knowledge base extends every reading, no code
change. Negation is NegEx-style (Chapman et al. 2001): a trigger ("not", "no", "without", "rather
than", ...) negates the terms after it up to the end of the clause.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from pathvlm.data.knowledge import KnowledgeBase
from pathvlm.evals.answers import ANSWER_TAG, extract_option_letter, extract_yes_no

REASONS = {
    "reasoning_vs_answer": "the class or verdict the reasoning gives is not the one the answer gives",
    "denies_described": "the text denies the class (or verdict) that its own description shows",
    "self_contradiction": "one phrase is both benign and malignant (\"benign adenocarcinoma\")",
    "either_or_answered_yes_no": "an either-or question (\"benign or malignant?\") answered yes or no",
    "report_mismatch": "the report's diagnosis line disagrees with its specimen line or description",
    "wrong_organ": "the text names an organ other than the tile's",
}

# not "reactive": a "reactive stroma" (desmoplasia) surrounds invasive carcinoma, so it is no benign verdict
BENIGN_WORDS = ("benign", "normal", "non-neoplastic", "nonneoplastic", "non-malignant", "bland")
STRONG_MALIGNANT = ("malignant", "malignancy", "carcinoma", "adenocarcinoma", "cancer", "cancerous", "metastatic")
MALIGNANT_WORDS = STRONG_MALIGNANT + ("neoplastic", "tumour", "tumor", "invasive")
BENIGN_QUALIFIERS = ("benign", "normal", "non-neoplastic", "nonneoplastic", "non-malignant")  # "benign adenocarcinoma"
GENERIC_NOUNS = ("tissue", "mucosa", "epithelium", "lesion", "process", "cells", "changes", "features", "findings")
STOP = set("a an the of in with and or to by as at on from into for is are be this that these those there its it "
           "which than some between within without no not consistent contains located form forms most shape size high "
           "dominated field figures ratio spaces loss lining".split())  # too common to be a class's feature
PRE_NEGATION = (r"not", r"no", r"without", r"absence of", r"absent", r"negative for", r"free of", r"rather than",
                r"instead of", r"unlike", r"nor", r"neither", r"never", r"isn't", r"aren't", r"cannot be",
                r"rule out", r"rules out", r"ruled out", r"lack of", r"lacks", r"lacking", r"nothing of")
POST_NEGATION = r"\s+(?:is|are|was|were)\s+(?:not\s+(?:present|seen|identified|found)|absent|excluded)\b"
# where a negation's scope ends: punctuation, contrast words, and NegEx's termination phrases
CLAUSE_END = re.compile(r"[.;:?!\n]|\b(?:but|however|although|though|whereas|except|yet|which|in keeping with|"
                        r"consistent with|compatible with|suggestive of|diagnostic of|typical of|characteristic of)\b")
NEGATION_WINDOW = 6  # words after a trigger that it can reach (NegEx uses 5)
# words before a class name, in its sentence, that make the name the sentence's diagnosis rather than a finding
CONCLUSION = re.compile(r"\b(?:fits?|fitting|consistent with|compatible with|in keeping with|suggestive of|"
                        r"suggests?|diagnostic of|diagnosis|diagnose[sd]?|typical of|characteristic of|those of|"
                        r"represents?|indicates?|favou?rs?|option|answer|this is|it is|these are)\b")
SENTENCE_END = re.compile(r"[.;:?!\n]")


# ----------------------------------------------------------------------------- vocabulary
@dataclass
class Term:
    text: str
    label: str | None  # the class it names, or None for a bare verdict word or organ word
    verdict: str | None  # "benign" | "malignant" | None
    organ: str | None  # the organ its words name, if any


@dataclass
class Vocabulary:
    terms: dict[str, Term]
    organs: dict[str, str]  # organ word -> organ
    features: dict[str, set[str]]  # class -> words only its descriptions use
    class_organ: dict[str, str]
    class_verdict: dict[str, str]
    class_texts: dict[str, str] = field(default_factory=dict)  # class -> all its descriptions, lower case
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self):
        alts = sorted(self.terms, key=len, reverse=True)
        self.pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in alts) + r")(?![\w-])")

    @classmethod
    def from_kb(cls, kb: KnowledgeBase) -> "Vocabulary":
        organ_words: dict[str, str] = {}
        for organ, words in kb.organs.items():
            for w in [organ, *words]:
                organ_words[w.lower()] = organ
        for e in kb.classes.values():
            organ_words.setdefault(e["organ"].lower(), e["organ"])
        organ_re = re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(organ_words, key=len, reverse=True))
                              + r")(?![\w-])") if organ_words else None

        def organ_of(text: str) -> str | None:
            m = organ_re.search(text) if organ_re else None
            return organ_words[m.group(1)] if m else None

        verdict = {label: ("malignant" if e.get("malignant") else "benign") for label, e in kb.classes.items()}
        texts = {label: _class_text(e).lower() for label, e in kb.classes.items()}
        terms: dict[str, Term] = {}
        for w in BENIGN_WORDS:
            terms[w] = Term(w, None, "benign", None)
        for w in MALIGNANT_WORDS:
            terms[w] = Term(w, None, "malignant", None)
        for w, organ in organ_words.items():
            terms[w] = Term(w, None, None, organ)
        cores: dict[str, set[str]] = {}
        for label, e in kb.classes.items():
            names = [label, *e["synonyms"], e["report"]["diagnosis"].split(";")[0]]
            for name in names:
                name = _clean(name)
                terms[name] = Term(name, label, verdict[label], organ_of(name))
                core = _clean(organ_re.sub(" ", name)) if organ_re else name
                core = re.sub(r"^(?:of|the|of the)\s+|\s+(?:of|of the|the)$", "", core).strip()
                if core and core != name:
                    cores.setdefault(core, set()).add(label)
        for core, labels in cores.items():
            content = [w for w in core.split() if w not in STOP and w not in BENIGN_WORDS and w not in GENERIC_NOUNS]
            others = [t for lb, t in texts.items() if lb not in labels]
            # a class's core name names it only when no other class's text uses those words
            free = core not in terms or terms[core].label is None  # a class's core name outranks a bare word
            if len(labels) == 1 and content and free and not any(_has(t, core) for t in others):
                (label,) = labels
                terms[core] = Term(core, label, verdict[label], None)
        features = _features(kb, set(terms))
        full = {label: _class_text(e, magnifications=True).lower() for label, e in kb.classes.items()}
        return cls(terms, organ_words, features, {lb: e["organ"] for lb, e in kb.classes.items()}, verdict, full)


def _class_text(e: dict, magnifications: bool = False) -> str:
    """A class's descriptions, observations and report microscopy; with ``magnifications`` also those written
    for each magnification (``100x``, ``400x``)."""
    parts = [e] + (list((e.get("magnifications") or {}).values()) if magnifications else [])
    return " ".join(t for p in parts for t in [*p.get("descriptions", []), *p.get("observations", []),
                                                (p.get("report") or {}).get("microscopy", "")])


def _clean(s: str) -> str:
    return " ".join(re.sub(r"[.,;:]+$", "", s.strip().lower()).split())


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text) is not None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z][a-z'-]*[a-z]|[a-z]", text.lower())


def _affirmed_words(text: str) -> set[str]:
    """Content words of ``text`` outside any negation's scope ("no desmoplasia" does not describe desmoplasia)."""
    out = set()
    for clause in CLAUSE_END.split(text.lower()):
        words = _words(clause)
        skip = 0
        for i, w in enumerate(words):
            if _trigger_at(words, i):
                skip = NEGATION_WINDOW + 1
            if skip:
                skip -= 1
                continue
            if len(w) > 3 and w not in STOP:
                out.add(w)
    return out


def _trigger_at(words: list[str], i: int) -> bool:
    for trig in PRE_NEGATION:
        t = trig.split()
        if words[i:i + len(t)] == t:
            return True
    return False


def _features(kb: KnowledgeBase, term_texts: set[str]) -> dict[str, set[str]]:
    """Per class, the affirmed description words that no other class's text uses (names and verdict
    words excluded: they are read as names, not as features)."""
    # every description the knowledge base writes for a class, its magnifications' included: a word that only
    # oral carcinoma's 400x text uses ("glassy pink cytoplasm") must not count as another class's feature
    words = {label: _affirmed_words(_class_text(e, magnifications=True)) for label, e in kb.classes.items()}
    every = {label: set(_words(_class_text(e, magnifications=True))) for label, e in kb.classes.items()}
    named = {w for t in term_texts for w in t.split()}
    out = {}
    for label, ws in words.items():
        others = set().union(*(every[o] for o in every if o != label)) if len(every) > 1 else set()
        out[label] = {w for w in ws if w not in others and w not in named}
    return out


@lru_cache(maxsize=8)
def _default_vocabulary(path: str | None = None) -> Vocabulary:
    return Vocabulary.from_kb(KnowledgeBase.load(path))


def vocabulary(kb: KnowledgeBase | str | None = None) -> Vocabulary:
    """The vocabulary of a knowledge base (default: the bundled one; cached)."""
    if isinstance(kb, KnowledgeBase):
        return Vocabulary.from_kb(kb)
    return _default_vocabulary(str(kb) if kb else None)


# ----------------------------------------------------------------------------- reading text
@dataclass
class Mention:
    term: Term
    negated: bool
    start: int
    end: int


def mentions(text: str, vocab: Vocabulary) -> list[Mention]:
    """Every vocabulary term in ``text`` (longest first at each place), each marked negated when a
    negation trigger before it in the same clause reaches it, or a post-negation follows it."""
    low = text.lower()
    out = []
    for m in vocab.pattern.finditer(low):
        out.append(Mention(vocab.terms[m.group(1)], _negated(low, m.start(), m.end()), m.start(), m.end()))
    return out


def _negated(low: str, start: int, end: int) -> bool:
    before = low[:start]
    ends = list(CLAUSE_END.finditer(before))
    clause = before[ends[-1].end():] if ends else before
    words = _words(clause)
    for i in range(len(words)):
        if _trigger_at(words, i) and len(words) - i <= NEGATION_WINDOW + len(words[i].split()):
            return True
    return re.match(POST_NEGATION, low[end:]) is not None


@dataclass
class Claims:
    """What one part of the text asserts."""
    classes: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)
    verdicts: set[str] = field(default_factory=set)
    denied_verdicts: set[str] = field(default_factory=set)
    organs: set[str] = field(default_factory=set)
    described: str | None = None  # the class the feature words point to, when clear
    described_verdict: str | None = None


QUESTION = re.compile(r"[^.!?\n]*\?")


def claims(text: str, vocab: Vocabulary) -> Claims:
    """What ``text`` asserts; questions in it ("Is it benign or malignant?") assert nothing."""
    text = QUESTION.sub(" ", text)
    c = Claims()
    for m in mentions(text, vocab):
        t = m.term
        if m.negated:
            if t.label:
                c.denied.add(t.label)
            elif t.verdict:
                c.denied_verdicts.add(t.verdict)
            continue
        if t.label:
            c.classes.add(t.label)
        if t.verdict:
            c.verdicts.add(t.verdict)
        if t.organ:
            c.organs.add(t.organ)
    c.described, c.described_verdict = described(text, vocab)
    return c


def described(text: str, vocab: Vocabulary) -> tuple[str | None, str | None]:
    """The class whose feature words the text uses, when one clearly leads (at least 2 words and
    twice any other class), and the verdict they point to (at least 2 words on one side, none on the
    other)."""
    words = _affirmed_words(text)
    hits = Counter({label: len(words & f) for label, f in vocab.features.items()})
    ranked = hits.most_common()
    cls = None
    if ranked and ranked[0][1] >= 2 and (len(ranked) == 1 or ranked[0][1] >= 2 * ranked[1][1]):
        cls = ranked[0][0]
    side = Counter()
    for label, n in hits.items():
        side[vocab.class_verdict[label]] += n
    verdict = None
    for v, other in (("malignant", "benign"), ("benign", "malignant")):
        if side[v] >= 2 and side[other] == 0:
            verdict = v
    return cls, verdict


def findings_masked(text: str, answered: set[str], vocab: Vocabulary) -> str:
    """``text`` with the mentions of classes that are findings blanked out (same length). A mention is a
    finding when its sentence does not conclude with it (:data:`CONCLUSION` before it in the same sentence)
    and its term occurs in the descriptions of an ``answered`` class, or the text itself concludes against
    that class and another class's descriptions use the term. "The stroma shows a chronic inflammatory
    infiltrate" in an answer of oral squamous cell carcinoma is a finding; "This fits inflammatory
    infiltrate" stays a diagnosis."""
    if not vocab.class_texts:
        return text
    low = text.lower()
    found = [(m, _concludes(low, m.start)) for m in mentions(text, vocab)]
    # the text's own conclusion against a class ("These features are not those of inflammatory infiltrate"):
    # an earlier plain mention of it ("a chronic inflammatory infiltrate") is then a finding of some other class
    denied_here = {m.term.label for m, c in found if c and m.negated and m.term.label}
    out = list(text)
    for m, concludes in found:
        label = m.term.label
        if not label or label in answered or m.negated or concludes:
            continue
        of_answer = any(_has(vocab.class_texts.get(a, ""), m.term.text) for a in answered)
        of_other = label in denied_here and any(_has(t, m.term.text) for lb, t in vocab.class_texts.items()
                                                if lb != label)
        if of_answer or of_other:
            out[m.start:m.end] = " " * (m.end - m.start)
    return "".join(out)


def _concludes(low: str, start: int) -> bool:
    """Whether the sentence before ``start`` frames what follows as its diagnosis (:data:`CONCLUSION`)."""
    ends = list(SENTENCE_END.finditer(low[:start]))
    return CONCLUSION.search(low[ends[-1].end() if ends else 0:start]) is not None


# ----------------------------------------------------------------------------- one answer
THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S | re.I)
DIAGNOSIS = re.compile(r"^\W*(?:final\s+)?diagnosis\s*:\s*(.+)$", re.I | re.M)
SPECIMEN = re.compile(r"^\W*specimen\s*:\s*(.+)$", re.I | re.M)
EITHER_OR = re.compile(r"\b(?:is|are|does|do)\b[^?.!\n]*\bor\b[^?.!\n]*\?", re.I)
YES_NO_START = re.compile(r"^\W*(yes|no)\b", re.I)
ASKED = re.compile(r"\bis\s+(?:this|it|the\s+\w+)\s+(.+?)\?", re.I)
ASKED_YES_NO = re.compile(r"answer\s+yes\s+or\s+no", re.I)


@dataclass
class Reading:
    reasoning: Claims
    answer: Claims
    yes_no: str | None = None
    asked: str | None = None  # the class a yes/no question asks about
    option_class: str | None = None
    diagnosis: str | None = None  # the report's diagnosis line
    specimen_organs: set[str] = field(default_factory=set)
    described: str | None = None  # the class the whole text's features describe
    reasons: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.reasons

    def summary(self) -> dict:
        return {"reasons": list(self.reasons), "reasoning_classes": sorted(self.reasoning.classes),
                "described": self.described, "answer_classes": sorted(self.answer.classes),
                "answer_verdicts": sorted(self.answer.verdicts), "yes_no": self.yes_no, "asked": self.asked,
                "diagnosis": self.diagnosis, "organs": sorted(self.reasoning.organs | self.answer.organs)}


def _split(text: str) -> tuple[str, str]:
    """(reasoning, answer): the think block and the answer tag; a report's description lines are its
    reasoning and its diagnosis line the answer; plain text is all answer."""
    think = THINK.search(text)
    reasoning = think.group(1) if think else ""
    tags = ANSWER_TAG.findall(text)
    answer = tags[-1] if tags else THINK.sub("", text)
    diag = DIAGNOSIS.findall(answer)
    if diag:
        reasoning += "\n" + DIAGNOSIS.sub("", answer)
        answer = diag[-1]
    return reasoning.strip(), answer.strip()


def check(text: str, question: str | None = None, options: list[str] | None = None, organ: str | None = None,
          vocab: Vocabulary | None = None) -> Reading:
    """Read one completion and list its inconsistencies (``Reading.reasons``, keys of :data:`REASONS`).

    ``question`` lets a yes/no answer be read against the class asked about, and an either-or question
    be recognised; ``options`` turns an option letter into its class; ``organ`` is the tile's organ
    (the wrong-organ check is skipped without it)."""
    vocab = vocab or vocabulary()
    text = text or ""
    reasoning_text, answer_text = _split(text)
    # the reasoning is read after the answer: what the answer asserts decides which class names are findings
    r = Reading(Claims(), claims(answer_text, vocab))
    diag = DIAGNOSIS.findall(text)
    r.diagnosis = diag[-1].strip() if diag else None
    r.specimen_organs = claims(" ".join(SPECIMEN.findall(text)), vocab).organs
    reasons = []

    # what the final answer asserts beyond the words it contains: yes/no to the asked class, an option's class
    yn = extract_yes_no(text) if YES_NO_START.match(answer_text) or answer_text.lower() in ("yes", "no") else None
    r.yes_no = yn
    asked_q = ASKED.search(question) if question else None
    if asked_q:
        asked = claims(asked_q.group(1), vocab)
        r.asked = next(iter(asked.classes)) if len(asked.classes) == 1 else None
    if yn and r.asked:
        (r.answer.classes if yn == "yes" else r.answer.denied).add(r.asked)
        if yn == "yes":
            r.answer.verdicts.add(vocab.class_verdict[r.asked])
    if options:
        letter = extract_option_letter(text, options)
        if letter and ord(letter) - 65 < len(options):
            picked = claims(options[ord(letter) - 65], vocab)
            if len(picked.classes) == 1:
                r.option_class = next(iter(picked.classes))
                r.answer.classes = {r.option_class}
                r.answer.verdicts = {vocab.class_verdict[r.option_class]}

    # class names that are findings of the answered class, or of the class the whole text's features describe
    whole = claims(text, vocab)
    shown = {whole.described} if whole.described else set()
    r.reasoning = claims(findings_masked(reasoning_text, r.answer.classes | shown, vocab), vocab)

    # an either-or question (asked, or written into the answer itself) answered yes or no
    either_or = bool(question and EITHER_OR.search(question) and not ASKED_YES_NO.search(question))
    own = list(EITHER_OR.finditer(text))
    if yn and either_or or any(YES_NO_START.match(text[m.end():]) for m in own):
        reasons.append("either_or_answered_yes_no")

    rc, ac = r.reasoning, r.answer
    # the reasoning's claim: named classes, else the verdict it states, else what its features describe
    r_verdicts = rc.verdicts | {_other(v) for v in rc.denied_verdicts}
    if not r_verdicts and not rc.classes and rc.described_verdict:
        r_verdicts = {rc.described_verdict}
    a_verdicts = ac.verdicts | {_other(v) for v in ac.denied_verdicts}
    if (rc.classes and ac.classes and not rc.classes & ac.classes) or (rc.classes & ac.denied) \
            or (rc.denied & ac.classes) or (len(r_verdicts) == 1 and len(a_verdicts) == 1 and r_verdicts != a_verdicts):
        reasons.append("reasoning_vs_answer")

    # denying what was just described ("... cribriform glands ... These features are not those of adenocarcinoma")
    r.described = whole.described
    dv = whole.described_verdict
    denied = rc.denied | ac.denied
    if (whole.described and whole.described in denied) \
            or (dv and (dv in rc.denied_verdicts | ac.denied_verdicts or _other(dv) in rc.verdicts | ac.verdicts)):
        reasons.append("denies_described")

    if _self_contradiction(text, vocab):
        reasons.append("self_contradiction")

    # a report: the diagnosis line against the specimen line and the description
    if r.diagnosis is not None:
        d = claims(r.diagnosis, vocab)
        tags = ANSWER_TAG.findall(text)
        body = tags[-1] if tags else THINK.sub("", text)
        desc = claims(findings_masked(DIAGNOSIS.sub("", SPECIMEN.sub("", body)), d.classes, vocab), vocab)
        if (d.organs and r.specimen_organs and not d.organs & r.specimen_organs) \
                or (desc.described_verdict and d.verdicts and desc.described_verdict not in d.verdicts) \
                or (desc.classes and d.classes and not desc.classes & d.classes):
            reasons.append("report_mismatch")

    named = rc.organs | ac.organs | r.specimen_organs
    if organ and any(o.lower() != organ.lower() for o in named):
        reasons.append("wrong_organ")
    r.reasons = list(dict.fromkeys(reasons))
    return r


def _other(verdict: str) -> str:
    return "malignant" if verdict == "benign" else "benign"


def _self_contradiction(text: str, vocab: Vocabulary) -> bool:
    """A benign qualifier directly before a malignant name ("benign adenocarcinoma", "normal carcinoma")
    or "malignant" before a benign class's name, in one noun phrase: at most one word between, no
    punctuation or conjunction."""
    low = text.lower()
    ms = [m for m in mentions(text, vocab) if m.term.verdict and not m.negated]
    for a, b in zip(ms, ms[1:]):
        benign_first = a.term.text in BENIGN_QUALIFIERS and (b.term.text in STRONG_MALIGNANT or
                                                            (b.term.label and b.term.verdict == "malignant"))
        malignant_first = a.term.text in ("malignant", "cancerous") and b.term.label and b.term.verdict == "benign"
        if not (benign_first or malignant_first):
            continue
        between = low[a.end:b.start]
        if re.search(r"[^\w\s-]|\b(?:or|and|nor|versus|vs|from|than|to)\b", between):
            continue
        if len(between.split()) <= 1:
            return True
    return False


# ----------------------------------------------------------------------------- a set of answers
OPTION_LINE = re.compile(r"^\(?([A-J])[.)]\s+(.+)$", re.M)


def options_in(question: str | None) -> list[str] | None:
    """The options listed in a multiple-choice prompt (``A. first`` or ``(A) first`` lines), or None."""
    found = OPTION_LINE.findall(question or "")
    if not found or [x for x, _ in found] != [chr(65 + i) for i in range(len(found))]:
        return None
    return [o.strip() for _, o in found]


def consistency_metrics(texts: list[str], questions: list[str | None] | None = None,
                        options: list[list[str] | None] | None = None, organs: list[str | None] | None = None,
                        ids: list[str] | None = None, vocab: Vocabulary | None = None, n_examples: int = 5,
                        reasons_out: list | None = None) -> dict:
    """The share of inconsistent answers (any reason), the count per reason, the wrong-organ rate and
    the first inconsistent examples. ``reasons_out``: a list that receives each answer's reasons, in order."""
    vocab = vocab or vocabulary()
    n = len(texts)
    questions = questions or [None] * n
    options = options or [None] * n
    organs = organs or [None] * n
    ids = ids or [str(i) for i in range(n)]
    counts = Counter()
    bad, examples = 0, []
    checked_organ = 0
    for i, (t, q, o, org) in enumerate(zip(texts, questions, options, organs)):
        r = check(t, q, o or options_in(q), org, vocab)
        checked_organ += org is not None
        counts.update(r.reasons)
        if reasons_out is not None:
            reasons_out.append(list(r.reasons))
        if r.reasons:
            bad += 1
            if len(examples) < n_examples:
                examples.append({"id": ids[i], "completion": t, **r.summary()})
    return {"inconsistent_rate": bad / n if n else 0.0, "n": n,
            "wrong_organ_rate": counts["wrong_organ"] / checked_organ if checked_organ else None,
            "n_with_organ": checked_organ, "reasons": {k: counts[k] for k in REASONS}, "examples": examples}
