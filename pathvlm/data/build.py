"""Run a recipe end to end: read sources, curate, split, audit, build each stage's set, write a data card.

Every stage is named and logs counts in and out. Malformed rows (bad json line, missing or
unreadable image, empty caption) are counted by reason and skipped. The build writes into
``OUT.partial`` and renames it at the end, so an interrupted build leaves no half-written output
and a rerun produces byte-identical files (checksums.json).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
from collections import Counter, defaultdict
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pathvlm.data import dedup, text_clean
from pathvlm.data.builders import BUILDERS
from pathvlm.data.config import RecipeConfig
from pathvlm.data.knowledge import KnowledgeBase
from pathvlm.data.parallel import ordered_map, resolve_workers
from pathvlm.data.sources import Malformed, get_adapter
from pathvlm.data.splits import assign_splits, audit_leakage, require_no_leakage
from pathvlm.errors import ImageError, PathVLMError
from pathvlm.images import load_image


class StageLog:
    def __init__(self):
        self.stages: list[dict] = []

    def add(self, name: str, n_in: int, n_out: int, **details):
        self.stages.append({"stage": name, "in": n_in, "out": n_out, **details})


def _progress(it, total=None, desc="", enabled=True):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="row")


def read_sources(recipe: RecipeConfig, malformed: Counter, malformed_examples: list, progress: bool):
    rows = []
    per_source = {}
    for src in recipe.sources:
        info = get_adapter(src.adapter)
        n = 0
        for item in _progress(info.read(src.root, **src.options) if src.root is not None else info.read(**src.options),
                              desc=f"reading {src.name}", enabled=progress):
            if src.limit is not None and n >= src.limit:
                break
            if isinstance(item, Malformed):
                malformed[f"{src.name}: {item.reason}"] += 1
                if len(malformed_examples) < 20:
                    malformed_examples.append({"source": src.name, "reason": item.reason, "where": item.where})
                continue
            n += 1
            label = src.label_map.get(item.label, item.label) if item.label else ""
            rows.append({
                "id": hashlib.sha1(f"{src.name}/{item.key}".encode()).hexdigest()[:16], "key": item.key,
                "source": src.name, "licence": src.licence or info.licence, "group": f"{src.name}/{item.group}",
                "text": item.text or "", "image_path": item.image_path, "image": item.image_bytes, "task": item.task,
                "question": item.question, "options": list(item.options), "answer": item.answer, "label": label,
                "rationale": item.rationale, "source_split": item.source_split, "meta": item.meta,
            })
        per_source[src.name] = {"adapter": src.adapter, "root": src.root, "licence": src.licence or info.licence,
                                "records": n, "homepage": info.homepage}
    return rows, per_source


def encode_image(raw: bytes, max_side: int, max_pixels: int | None = None) -> tuple[bytes, Image.Image]:
    """The bytes stored for an image: the original when it is an RGB JPEG/PNG within ``max_side``
    (exact, no re-encoding loss), otherwise RGB PNG downscaled to ``max_side``. Deterministic."""
    img = load_image(raw, max_pixels=max_pixels)
    with Image.open(io.BytesIO(raw)) as probe:
        fmt, mode = probe.format, probe.mode
    if fmt in ("JPEG", "PNG") and mode == "RGB" and max(img.size) <= max_side:
        return raw, img
    rgb = img
    if max(rgb.size) > max_side:
        rgb = rgb.copy()
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return buf.getvalue(), rgb


@dataclass(frozen=True)
class ImageRef:
    """An image kept by reference until it is written, so memory holds metadata, not pixels.
    Only images that exist nowhere on disk (cut from a wheel's image) keep their bytes."""

    sha256: str
    path: str | None = None
    data: bytes | None = None
    max_side: int = 1024

    def read(self) -> bytes:
        raw = self.data if self.data is not None else Path(self.path).read_bytes()
        return encode_image(raw, self.max_side, max_pixels=None)[0]


def _load_one(task):
    """One distinct image (a path, or bytes cut from a wheel's image): ``(sha256, dHash, None)`` or
    ``(None, reason, message)``. Runs in a worker process with ``--workers``."""
    path, data, max_side, max_pixels = task
    try:
        raw = data if data is not None else Path(path).read_bytes()
        stored, img = encode_image(raw, max_side, max_pixels)
        return hashlib.sha256(stored).hexdigest(), dedup.dhash(img), None
    except (OSError, ImageError) as e:
        reason = "missing image" if isinstance(e, FileNotFoundError) else "unreadable image"
        return None, reason, str(e)


def load_images(rows, recipe, malformed, examples, log: StageLog, progress: bool, workers: int = 1,
                engine: str = "local"):
    """Decode, hash and check every distinct image once (on ``workers`` processes, or tasks of ``engine``:
    ``pathvlm.data.engine``), then attach the results."""
    c = recipe.curation
    keys, tasks = {}, []
    for r in rows:
        if r["image"] is None and not r["image_path"]:
            continue
        key = r["image_path"] or hashlib.sha256(r["image"]).hexdigest()
        if key not in keys:
            keys[key] = len(tasks)
            tasks.append((r["image_path"] if r["image"] is None else None, r["image"], c.max_image_side, c.max_pixels))
    if engine == "local":
        loaded = ordered_map(_load_one, tasks, workers, progress=progress, desc="loading images")
    else:
        from pathvlm.data.engine import engine_map

        loaded = engine_map(_load_one, tasks, engine, workers)
    cache = {}
    for key, i in keys.items():
        digest, extra, err = loaded[i]
        path, data = tasks[i][0], tasks[i][1]
        if digest is None:
            cache[key] = (None, extra, err)
        else:
            cache[key] = (ImageRef(digest, path=path, data=data, max_side=c.max_image_side), digest, extra)
    out = []
    for r in rows:
        if r["image"] is None and not r["image_path"]:
            if recipe.require_images:
                malformed[f"{r['source']}: missing image"] += 1
                continue
            out.append({**r, "image_sha256": "", "dhash": None})
            continue
        data, digest, extra = cache[r["image_path"] or hashlib.sha256(r["image"]).hexdigest()]
        if data is None:
            if recipe.require_images:
                malformed[f"{r['source']}: {digest}"] += 1
                if len(examples) < 20:
                    examples.append({"source": r["source"], "reason": digest, "where": str(extra)[:200]})
                continue
            out.append({**r, "image": None, "image_sha256": "", "dhash": None})
            continue
        out.append({**r, "image": data, "image_sha256": digest, "dhash": extra})
    log.add("load_images", len(rows), len(out), distinct_images=sum(1 for v in cache.values() if v[0] is not None))
    return out


def _curate_caption(text: str, clean: bool, rule, english_only: bool, min_words: int, max_words: int) -> tuple:
    """One caption through cleaning, the visual filter (``rule``: a sentence -> keep?; None: no filter), the
    language and length filters: ``(stage reached, text, changed, kept sentences, removed sentences, the caption
    before the visual filter)``, the stage being ``empty``, ``visual``, ``language``, ``length`` or ``ok``. A pure
    function of the caption when ``rule`` is, so it runs on the worker pool."""
    changed = False
    if clean:
        cleaned = text_clean.clean_caption(text)
        changed, text = cleaned != text.strip(), cleaned
    if not text:
        return "empty", text, changed, [], [], text
    kept, removed, cleaned = [], [], text
    if rule is not None:
        res = text_clean.visual_sentences(text, rule=rule)
        kept, removed, text = res.kept, res.removed, res.text
        if not text:
            return "visual", text, changed, kept, removed, cleaned
    if english_only and not text_clean.looks_english(text):
        return "language", text, changed, kept, removed, cleaned
    if not min_words <= text_clean.word_count(text) <= max_words:
        return "length", text, changed, kept, removed, cleaned
    return "ok", text, changed, kept, removed, cleaned


def curate_text(rows, recipe, malformed, log: StageLog, card: dict, workers: int = 1):
    """Captions cleaned and filtered (``_curate_caption``), on ``workers`` processes unless the visual filter is the
    model (it runs here, in order); the same rows, counts and examples whatever the worker count."""
    c = recipe.curation
    model_filter = None
    if c.visual_filter == "model":
        from pathvlm.clip.factory import create_clip

        model, _, tok = create_clip(c.model_source)
        model_filter = text_clean.ModelSentenceFilter(model, tok)
    elif c.visual_filter not in ("none", "rule"):
        raise PathVLMError(f"visual_filter must be none, rule or model, not {c.visual_filter!r}")
    kept_s = removed_s = changed = 0
    examples = {"kept": [], "removed": []}
    out = []
    after_clean = after_visual = after_lang = 0
    rule = None if c.visual_filter == "none" else (model_filter or text_clean.is_visual_sentence)
    captions = [r["text"] for r in rows if r["task"] == "caption"]
    # the rule is a pure function: on the pool for large builds; the model filter runs here
    pool = workers if model_filter is None and len(captions) >= 2000 else 1
    curate = functools.partial(_curate_caption, clean=c.clean_captions, rule=rule, english_only=c.english_only,
                               min_words=c.min_words, max_words=c.max_words)
    results = iter(ordered_map(curate, captions, pool))
    for r in rows:
        if r["task"] != "caption":
            out.append(r)
            continue
        stage, text, was_changed, kept, removed, cleaned = next(results)
        changed += was_changed
        if stage == "empty":
            malformed[f"{r['source']}: empty caption"] += 1
            continue
        after_clean += 1
        if c.visual_filter != "none":
            kept_s += len(kept)
            removed_s += len(removed)
            shown = cleaned[:300]  # the caption before the visual filter, as the examples always showed it
            if removed and len(examples["removed"]) < 8 and all(e["caption"] != shown for e in examples["removed"]):
                examples["removed"].append({"caption": shown, "removed": removed[:3]})
            if kept and len(examples["kept"]) < 8 and all(e["caption"] != shown for e in examples["kept"]):
                examples["kept"].append({"caption": shown, "kept": kept[:3]})
        if stage == "visual":
            continue
        after_visual += 1
        if stage == "language":
            continue
        after_lang += 1
        if stage == "length":
            continue
        out.append({**r, "text": text})
    log.add("clean_captions", len(captions), after_clean, changed=changed)
    log.add(f"visual_filter ({c.visual_filter})", after_clean, after_visual, sentences_kept=kept_s, sentences_removed=removed_s)
    log.add("language_filter", after_visual, after_lang)
    log.add("length_filter", after_lang, sum(1 for r in out if r["task"] == "caption"),
            min_words=c.min_words, max_words=c.max_words)
    card["visual_filter"] = {"mode": c.visual_filter, "sentences_kept": kept_s, "sentences_removed": removed_s,
                             "examples": examples}
    return out


def deduplicate(rows, recipe, log: StageLog, card: dict, workers: int = 1):
    c = recipe.curation
    n_in = len(rows)
    # label conflicts: one image (identical bytes) labelled as two classes, e.g. a tile filed under both Normal and
    # OSCC: no label can be trusted, so every copy goes (counted in the card)
    conflicts: list[dict] = []
    if c.drop_label_conflicts:
        labels = defaultdict(set)
        for r in rows:
            if r["task"] == "classification" and r["image_sha256"]:
                labels[r["image_sha256"]].add(r["label"])
        bad = {h for h, ls in labels.items() if len(ls) > 1}
        conflicts = [r for r in rows if r["task"] == "classification" and r["image_sha256"] in bad]
        rows = [r for r in rows if not (r["task"] == "classification" and r["image_sha256"] in bad)]
    # exact duplicates: same image bytes and same text / question
    seen, out, exact = set(), [], 0
    for r in rows:
        key = (r["image_sha256"], dedup.normalise_text(r["text"]), r["question"], r["answer"], r["label"], r["task"])
        if c.drop_exact_duplicates and key in seen:
            exact += 1
            continue
        seen.add(key)
        out.append(r)
    # near-duplicate images (dHash): one cluster -> one group, so they land in the same split
    img_ids = sorted({r["image_sha256"] for r in out if r["image_sha256"]})
    hashes = {r["image_sha256"]: r["dhash"] for r in out if r["image_sha256"]}
    near = dedup.near_duplicates([hashes[h] for h in img_ids], c.image_near_duplicate_bits)
    clusters = dedup.duplicate_clusters(len(img_ids), near.edges)
    root_of = {h: img_ids[clusters[i]] for i, h in enumerate(img_ids)}
    groups_by_root = defaultdict(set)
    for r in out:
        if r["image_sha256"]:
            groups_by_root[root_of[r["image_sha256"]]].add(r["group"])
    # one image cluster can join several groups and one group several clusters: union-find over
    # groups (dedup.duplicate_clusters) merges them transitively, each into its smallest name
    group_names = sorted({r["group"] for r in out})
    gidx = {g: i for i, g in enumerate(group_names)}
    links = []
    for gs in groups_by_root.values():
        if len(gs) > 1:
            first = min(gs)  # once per cluster: in the loop it was quadratic in the cluster's size (alike tiles)
            links += [(gidx[first], gidx[g]) for g in gs if g != first]
    group_root = dedup.duplicate_clusters(len(group_names), links)
    merge = {g: group_names[group_root[i]] for i, g in enumerate(group_names) if group_root[i] != i}
    for r in out:
        r["group"] = merge.get(r["group"], r["group"])
    near_dropped = 0
    if c.drop_near_duplicate_images:
        filtered = []
        for r in out:
            root = root_of.get(r["image_sha256"])
            if root is not None and root != r["image_sha256"]:
                near_dropped += 1
                continue
            filtered.append(r)
        out = filtered
    # near-duplicate captions (SimHash), reported
    caps = [r for r in out if r["task"] == "caption" and r["text"]] if c.text_near_duplicates else []
    text_near = dedup.caption_near_duplicates([r["text"] for r in caps], c.text_near_duplicate_jaccard, workers=workers)
    log.add("deduplicate", n_in, len(out), exact_duplicates=exact, **({"label_conflicts_dropped": len(conflicts)}
                                                                     if c.drop_label_conflicts else {}),
            near_duplicate_image_pairs=near.pair_count,
            groups_merged=len(merge), near_duplicates_dropped=near_dropped,
            near_duplicate_caption_pairs=text_near.pair_count if c.text_near_duplicates else "not searched")
    if c.drop_label_conflicts:
        card["label_conflicts"] = {"rows_dropped": len(conflicts), "images": len({r["image_sha256"] for r in conflicts}),
                                   "examples": sorted({f"{r['source']}/{r['key']} ({r['label']})" for r in conflicts})[:30]}
    card["duplicates"] = {"exact_rows": exact, "near_duplicate_image_pairs": near.pair_count,
                          "groups_merged_by_image_similarity": len(merge),
                          "near_duplicate_images_dropped": near_dropped,
                          "near_duplicate_caption_pairs": text_near.pair_count if c.text_near_duplicates else None,
                          "caption_pair_examples": [[caps[i]["text"][:120], caps[j]["text"][:120]]
                                                    for i, j in text_near.edges[:3]]}
    return out, hashes


def split_rows(rows, recipe, log: StageLog, card: dict):
    s = recipe.splits
    if s.use_source_splits:
        for r in rows:
            r["split"] = {"validation": "val", "dev": "val"}.get(r["source_split"], r["source_split"]) or "train"
    else:
        assignment = assign_splits([r["group"] for r in rows], s.ratios, seed=s.seed)
        for r in rows:
            r["split"] = assignment[r["group"]]
    sizes = Counter(r["split"] for r in rows)
    groups = {k: len({r["group"] for r in rows if r["split"] == k}) for k in sizes}
    log.add("group_split", len(rows), len(rows), rows=dict(sorted(sizes.items())), groups=dict(sorted(groups.items())))
    # audit: groups, exact images, near-duplicate images across splits
    img_ids = sorted({r["image_sha256"] for r in rows if r["image_sha256"]})
    first_row = {}
    for i, r in enumerate(rows):
        first_row.setdefault(r["image_sha256"], i)
    near = dedup.near_duplicates([rows[first_row[h]]["dhash"] for h in img_ids], recipe.curation.image_near_duplicate_bits)
    row_pairs = [(first_row[img_ids[i]], first_row[img_ids[j]]) for i, j in near.edges]
    report = audit_leakage(rows, row_pairs)
    card["leakage_audit"] = report.summary()
    card["splits"] = {"rows": dict(sorted(sizes.items())), "groups": dict(sorted(groups.items()))}
    if s.on_leak == "fail":
        require_no_leakage(report)
    return rows


def build_recipe(recipe: RecipeConfig, out: str | Path, progress: bool = True, recipe_path: str | None = None,
                 workers: int = 1, engine: str = "local") -> dict:
    """Build ``recipe`` into ``out``. ``workers`` processes decode and hash images, hash captions and write shards
    (``pathvlm.data.parallel``); the output files and data card are byte-identical for any worker count.
    ``engine`` ``datatrove`` or ``ray`` runs the image stage on that engine instead (``pathvlm.data.engine``)."""
    workers = resolve_workers(workers)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log, malformed, malformed_examples = StageLog(), Counter(), []
    card: dict = {"recipe": recipe.name, "description": recipe.description, "recipe_file": recipe_path,
                  "config": asdict(recipe)}
    rows, per_source = read_sources(recipe, malformed, malformed_examples, progress)
    card["sources"] = per_source
    log.add("read_sources", sum(v["records"] for v in per_source.values()) + sum(malformed.values()), len(rows))
    if not rows:
        raise PathVLMError("the recipe's sources gave no usable rows: " + json.dumps(dict(malformed)))
    rows = load_images(rows, recipe, malformed, malformed_examples, log, progress, workers, engine)
    rows = curate_text(rows, recipe, malformed, log, card, workers)
    rows, _ = deduplicate(rows, recipe, log, card, workers)
    rows.sort(key=lambda r: (r["source"], r["id"]))
    rows = split_rows(rows, recipe, log, card)
    # questions and distractors draw on the classes this build labels (adding a class elsewhere changes nothing here)
    kb = KnowledgeBase.load(recipe.knowledge).subset({r["label"] for r in rows if r["task"] == "classification"})
    outputs = {}
    from pathvlm.data.writer import checksums, write_parquet, write_webdataset

    for name in recipe.builders:
        built = list(BUILDERS[name](rows, kb, recipe.seed, **(
            {"captions_per_image": recipe.captions_per_image} if name == "clip" else {})))
        by_split = defaultdict(list)
        for b in built:
            by_split[b["split"]].append(b)
        outputs[name] = {}
        for split in sorted(by_split):
            write_parquet(by_split[split], partial / name, split, workers=workers)
            if recipe.webdataset:
                write_webdataset(by_split[split], partial / name / "webdataset", split)
            outputs[name][split] = len(by_split[split])
        log.add(f"build_{name}", len(rows), len(built))
        card.setdefault("examples", {})[name] = [_example(b) for b in built[: recipe.examples_in_card]]
    card["outputs"] = outputs
    card["stages"] = log.stages
    card["malformed"] = {"counts": dict(sorted(malformed.items())), "examples": malformed_examples}
    from pathvlm.data.card import write_card

    write_card(card, partial)
    sums = checksums(partial)
    (partial / "checksums.json").write_text(json.dumps(sums, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    card["checksums"] = sums
    return card


def _example(row: dict) -> dict:
    ex = {}
    for k, v in row.items():
        if k == "image":
            ex[k] = None if v is None else f"<image {v.sha256[:12]}>"
        elif k == "images":
            ex[k] = [f"<image {b.sha256[:12]}>" for b in v]
        else:
            ex[k] = v
    return ex
