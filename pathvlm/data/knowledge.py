"""The morphology knowledge base (JSON data): captions, chain-of-thought and reports for labelled images."""
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

    def entry(self, label: str) -> dict:
        if label not in self.classes:
            raise PathVLMError(f"class '{label}' is not in the knowledge base (known: {', '.join(self.classes)}); "
                               "map dataset labels to it with label_map in the recipe")
        return self.classes[label]

    def caption(self, label: str, rng: random.Random) -> str:
        e = self.entry(label)
        desc, syn, tpl = rng.choice(e["descriptions"]), rng.choice(e["synonyms"]), rng.choice(self.templates)
        return tpl.format(stain=e["stain"], organ=e["organ"], description=desc, Description=_cap(desc),
                          synonym=syn, Synonym=_cap(syn))

    def observations(self, label: str) -> str:
        return " ".join(self.entry(label)["observations"])

    def report(self, label: str) -> str:
        e = self.entry(label)
        return (f"Specimen: {e['organ']}, {e['stain']}-stained section.\n"
                f"Microscopic description: {e['report']['microscopy']}\n"
                f"Diagnosis: {e['report']['diagnosis']}")

    def options(self, label: str, rng: random.Random, n: int = 4) -> tuple[list[str], int]:
        """The true class plus n-1 distractors (other classes first, then the generic pool), shuffled."""
        others = [c for c in self.classes if c != label]
        rng.shuffle(others)
        pool = others + [d for d in self.distractors if d not in self.entry(label)["synonyms"]]
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
