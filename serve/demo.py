"""`pathvlm demo`: zero-shot classification and text retrieval on the bundled gallery, in the terminal.

A quick check without a browser (the web app is `pathvlm serve`). Runs offline on a fresh machine:
builds the gallery from pip-shipped images, indexes it with the chosen model (cached per model
fingerprint and folder), classifies one tile per source and runs text queries.
"""
from __future__ import annotations

import json

from pathvlm.clip.factory import create_clip
from pathvlm.clip.registry import NAMED_MODELS
from pathvlm.formatting import table
from pathvlm.serving.service import ensure_gallery, ensure_index
from pathvlm.zeroshot import ZeroShotClassifier, prompt_set_from_names

DEMO_CLASSES = ("carcinoma|tumour epithelium|malignant epithelial cells, stroma|connective tissue|collagen, "
                "squamous epithelium|epidermis|keratinocytes, lymphocytes|inflammatory cells, adipose tissue|fat")
DEMO_QUERIES = [
    "nests of tumour cells with large pleomorphic nuclei",
    "stratified squamous epithelium of the skin",
    "brown DAB immunohistochemical staining",
]


def run_demo(source: str = "pathclip-nano", gallery=None, index=None, device="cpu") -> int:
    folder = ensure_gallery(gallery)
    model, preprocess, tokenizer = create_clip(source, device=device)
    idx = ensure_index(folder, index, model, preprocess, source, device)
    print(f"\nmodel {source} (fingerprint {idx.fingerprint}); gallery {folder} with {idx.info['count']} tiles")
    spec = NAMED_MODELS.get(source)
    if spec is not None and not spec.trained:
        print(f"note: {source}'s projections are not trained, so zero-shot and text search below are at chance "
              "level;\n      image-to-image search (pathvlm search INDEX --image TILE) uses the pretrained trunk.")

    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
    first_per_source = {}
    for row in meta:
        first_per_source.setdefault(row["source_file"], row)
    clf = ZeroShotClassifier(model, tokenizer, prompt_set_from_names(DEMO_CLASSES), device=device)
    paths = [folder / r["file_name"] for r in first_per_source.values()]
    results = clf.classify_files(paths, preprocess, top_k=2, num_workers=0)
    print("\nZero-shot classification, one tile per source image:")
    rows = [[r["image"].split("/")[-1], f"{row['source_package']} ({row['organ'] or '?'}, {row['stain']})",
             ", ".join(f"{t['class']} {t['probability']:.2f}" for t in r["top_k"])]
            for r, row in zip(results, first_per_source.values())]
    print(table(rows, ["tile", "source", "top-2"]))

    for q in DEMO_QUERIES:
        hits = idx.search_text(q, model, tokenizer, k=3, device=device)
        print(f"\nText query: {q!r}")
        print(table([[h["rank"], f"{h['score']:.3f}", h["path"], h.get("source_package", "")] for h in hits],
                    ["rank", "score", "tile", "source"]))
    print("\nThe web app: pathvlm serve   |   pathvlm classify TILE --classes 'a,b,c'   |   pathvlm --help")
    return 0
