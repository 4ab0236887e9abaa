"""Caption cleaning and the visual-sentence filter.

Captions from textbooks, papers and videos carry sub-figure letters ("A,", "(B)"), references,
URLs and sentences about things no image shows (patient history, follow-up, treatment). The
seed work on text preprocessing for pathology report generation found that keeping only what is
visible prevents hallucinated sentences in generated reports; :func:`visual_sentences` does that
with rules, and :class:`ModelSentenceFilter` optionally with a PathCLIP text tower.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SUBFIGURE_LEAD = re.compile(r"^\s*(?:\(?[A-Ha-h]\)?\s*(?:,|\.|:|and|&|-|–)\s*)+(?=[A-Za-z(])")
SUBFIGURE_INLINE = re.compile(r"\s*\((?:[A-Ha-h](?:\s*(?:,|and|&|-|–|to)\s*[A-Ha-h])*)\)")
FIG_REF = re.compile(r"\s*\((?:see\s+)?(?:fig(?:ure)?s?\.?|table)\s*[\w.,\s-]*\)", re.I)
CITATION = re.compile(r"\s*\[(?:\d+(?:\s*[,–-]\s*\d+)*)\]")
URL = re.compile(r"https?://\S+|www\.\S+")
PANEL_WORDS = re.compile(r"\b(?:left|right|upper|lower|top|bottom)\s+panel\b,?\s*", re.I)
SPACES = re.compile(r"\s+")

# Sentences about the patient and the clinical course, not the slide.
NON_VISUAL = re.compile(
    r"\b(?:\d+[- ](?:year|yr|month|week|day)s?[- ]old|years? of age|patient|man|woman|boy|girl|child|infant"
    r"|presented|presents|presenting|complain|history|follow[- ]?up|months? later|years? later|weeks? later"
    r"|treated|treatment|therapy|chemotherap|radiotherap|surgery|surgical(?:ly)? (?:resected|removed)|resected"
    r"|underwent|admitted|prognosis|survival|survived|died|death|recurren|relapse|symptom|clinical(?:ly)?"
    r"|CT scan|MRI|ultrasound|radiograph|x-ray|serum|laboratory|lab tests?|family history|smok(?:er|ing)"
    r"|courtesy of|reproduced|adapted from|copyright|permission)\b",
    re.I,
)
# Words that make a sentence about what the slide shows.
VISUAL = re.compile(
    r"\b(?:cells?|nucle(?:i|us|ar)|cytoplasm\w*|gland\w*|stroma\w*|tissue|architecture|pattern|infiltrat\w*|mitos[ie]s"
    r"|mitotic|necros[ie]s|necrotic|fibros[ie]s|fibrous|epitheli\w*|lymphocyt\w*|eosinophil\w*|basophil\w*|stain\w*"
    r"|H&E|hematoxylin|haematoxylin|pleomorph\w*|atypi\w*|hyperchromat\w*|nucleol\w*|vacuol\w*|keratin\w*"
    r"|sheets?|nests?|cords?|trabecul\w*|papillae|papillary|crypts?|mucin\w*|collagen\w*|capillar\w*|vessels?"
    r"|magnification|shows?|showing|seen|reveals?|demonstrates?|composed|consist\w*|arranged|surrounded"
    r"|tumou?rs?|carcinoma\w*|adenoma\w*|sarcoma\w*|lymphoma\w*|metasta\w*|neoplas\w*|cellularity|matrix|cartilage"
    r"|bone|osteo\w*|fibr\w*|hyalin\w*|calcif\w*|granulom\w*|inflammat\w*|hemorrhag\w*|haemorrhag\w*|edema|oedema"
    r"|low[- ]power|high[- ]power|view|section|biopsy|specimen|lesion|mass|nodule|zones?|areas?|foci|focus"
    r"|\w+(?:omas?|osis|oses|itis|plasia|trophy|pathy)|expression|immunoreactiv\w*|positive|negative|growth|variant)\b",
    re.I,
)
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")


def clean_caption(text: str) -> str:
    """Remove sub-figure letters, figure references, citations and URLs; normalise whitespace."""
    if not text:
        return ""
    t = URL.sub("", text)
    t = " ".join(_capitalise(SUBFIGURE_LEAD.sub("", s)) for s in split_sentences(t.strip()))
    t = SUBFIGURE_INLINE.sub("", t)
    t = FIG_REF.sub("", t)
    t = CITATION.sub("", t)
    t = PANEL_WORDS.sub("", t)
    t = SPACES.sub(" ", t).strip()
    t = re.sub(r"\s+([,.;:])", r"\1", t)
    return _capitalise(t)


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in SENTENCE_SPLIT.split(text) if s.strip()]


def is_visual_sentence(sentence: str) -> bool:
    """Rule: drop sentences about the patient or clinical course, and fragments without content
    ("Low power.", "See"); keep the rest. A sentence naming something visible is always content."""
    if NON_VISUAL.search(sentence):
        return False
    return bool(VISUAL.search(sentence)) or word_count(sentence) >= 6


@dataclass
class SentenceFilterResult:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.kept)


def visual_sentences(text: str, rule=is_visual_sentence) -> SentenceFilterResult:
    res = SentenceFilterResult()
    for s in split_sentences(text):
        (res.kept if rule(s) else res.removed).append(s)
    return res


class ModelSentenceFilter:
    """Model-based variant: a sentence is visual if a PathCLIP text tower places it nearer to
    descriptions of microscopic appearance than to descriptions of clinical history."""

    VISUAL_PROTOTYPES = [
        "Sheets of atypical cells with enlarged hyperchromatic nuclei.",
        "The glands are lined by columnar epithelium with mucin.",
        "Dense fibrous stroma with scattered lymphocytes.",
        "High-power view showing mitotic figures and necrosis.",
    ]
    CLINICAL_PROTOTYPES = [
        "The patient was a 54-year-old woman with a history of abdominal pain.",
        "She was treated with chemotherapy and was alive two years later.",
        "The tumour recurred after surgery.",
        "Reproduced with permission from the publisher.",
    ]

    def __init__(self, model, tokenizer, margin: float = 0.0):
        from pathvlm.embed import embed_texts

        self.model, self.tokenizer, self.margin = model, tokenizer, margin
        self._embed = lambda texts: embed_texts(model, tokenizer, texts)
        self.visual = self._embed(self.VISUAL_PROTOTYPES).mean(0)
        self.clinical = self._embed(self.CLINICAL_PROTOTYPES).mean(0)

    def __call__(self, sentence: str) -> bool:
        e = self._embed([sentence])[0]
        return bool(float(e @ self.visual) - float(e @ self.clinical) > self.margin)


ENGLISH_STOPWORDS = frozenset(
    "the of and a an in is are was were with to by on for from as at or this that these which be it its "
    "shows show showing seen".split()
)


def looks_english(text: str, min_ascii: float = 0.9, min_stopwords: float = 0.05) -> bool:
    """Cheap language check: mostly ASCII letters and some English function words."""
    if not text:
        return False
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    ascii_share = sum(c.isascii() for c in letters) / len(letters)
    words = re.findall(r"[a-zA-Z]+", text.lower())
    stop_share = sum(w in ENGLISH_STOPWORDS for w in words) / max(1, len(words))
    return ascii_share >= min_ascii and (len(words) < 6 or stop_share >= min_stopwords)


def word_count(text: str) -> int:
    return len(re.findall(r"\S+", text or ""))
