"""The morphology knowledge base (JSON data): captions, chain-of-thought and reports for labelled images.

A class may carry ``magnifications`` (``"100x"``, ``"400x"``...: descriptions, observations and report
microscopy seen at that power); rows whose source gives a magnification (``meta["magnification"]``) get that
text, other rows the class's general text."""
from __future__ import annotations

import json
import random
from pathlib import Path

from pathvlm.errors import PathVLMError

DEFAULT_KB = Path(__file__).parent / "knowledge" / "morphology.json"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class KnowledgeBase:
    def __init__(self, data: dict):
        self.classes: dict[str, dict] = data["classes"]
        self.templates: list[str] = data["caption_templates"]
        self.distractors: list[str] = data.get("distractors", [])
        # organ -> the words that name it ("colonic", "colorectal"), read by pathvlm.evals.consistency
        self.organs: dict[str, list[str]] = data.get("organs", {})

    @classmethod
    def load(cls, path: str | Path | None = None) -> "KnowledgeBase":
        p = Path(path) if path else DEFAULT_KB
        try:
            return cls(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as e:
            raise PathVLMError(f"{p}: not a valid knowledge base ({type(e).__name__}: {e})") from None

    def subset(self, labels) -> "KnowledgeBase":
        """The classes among ``labels``, in the knowledge base's order (all of them when none is): the classes a
        build's closed questions and distractors draw from, so a recipe's questions stay within its own data and
        adding a class for another recipe does not change them."""
        keep = {c: e for c, e in self.classes.items() if c in set(labels)}
        kb = KnowledgeBase({"classes": keep or self.classes, "caption_templates": self.templates,
                            "distractors": self.distractors})
        return kb

    def at(self, label: str, magnification: str | None) -> dict:
        """The class's text at ``magnification`` (its general text when the class has none for it)."""
        e = self.entry(label)
        m = (e.get("magnifications") or {}).get(magnification) if magnification else None
        if not m:
            return {"descriptions": e["descriptions"], "observations": e["observations"],
                    "microscopy": e["report"]["microscopy"], "magnification": None}
        return {"descriptions": m.get("descriptions", e["descriptions"]),
                "observations": m.get("observations", e["observations"]),
                "microscopy": m.get("microscopy", e["report"]["microscopy"]), "magnification": magnification}

    def entry(self, label: str) -> dict:
        if label not in self.classes:
            raise PathVLMError(f"class '{label}' is not in the knowledge base (known: {', '.join(self.classes)}); "
                               "map dataset labels to it with label_map in the recipe")
        return self.classes[label]

    def caption(self, label: str, rng: random.Random, magnification: str | None = None) -> str:
        e = self.entry(label)
        desc = rng.choice(self.at(label, magnification)["descriptions"])
        syn, tpl = rng.choice(e["synonyms"]), rng.choice(self.templates)
        return tpl.format(stain=e["stain"], organ=e["organ"], description=desc, Description=_cap(desc),
                          synonym=syn, Synonym=_cap(syn))

    def observations(self, label: str, magnification: str | None = None) -> str:
        return " ".join(self.at(label, magnification)["observations"])

    def report(self, label: str, magnification: str | None = None) -> str:
        e, m = self.entry(label), self.at(label, magnification)
        power = f" ({m['magnification']})" if m["magnification"] else ""
        return (f"Specimen: {e['organ']}, {e['stain']}-stained section{power}.\n"
                f"Microscopic description: {m['microscopy']}\n"
                f"Diagnosis: {e['report']['diagnosis']}")

    def options(self, label: str, rng: random.Random, n: int = 4) -> tuple[list[str], int]:
        """The true class plus n-1 distractors (other classes first, then the generic pool), shuffled."""
        others = [c for c in self.classes if c != label]
        rng.shuffle(others)
        # a generic distractor inside one of the true class's names ("squamous cell carcinoma" for oral squamous
        # cell carcinoma) would be a second right answer
        names = [label, *self.entry(label)["synonyms"]]
        pool = others + [d for d in self.distractors if not any(d in n for n in names)]
        seen, picked = {label}, []
        for d in pool:
            if d not in seen:
                picked.append(d)
                seen.add(d)
            if len(picked) == n - 1:
                break
        opts = [label] + picked
        rng.shuffle(opts)
        return opts, opts.index(label)
