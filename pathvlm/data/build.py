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
import tempfile
from collections import Counter, deque
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathvlm.data import dedup, text_clean
from pathvlm.data.builders import BUILDERS
from pathvlm.data.config import RecipeConfig
from pathvlm.data.knowledge import KnowledgeBase
from pathvlm.data.parallel import Pool, resolve_workers
from pathvlm.data.sources import Malformed, get_adapter
from pathvlm.data.spill import RowColumns, RowSpill
from pathvlm.data.splits import LeakageReport, require_no_leakage
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


def read_sources(recipe: RecipeConfig, malformed: Counter, malformed_examples: list, progress: bool,
                 per_source: dict):
    """Every usable record of the recipe's sources as a row dict, one at a time; malformed records are counted
    (and the first 20 kept as examples); ``per_source`` is filled in as each source ends."""
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
            yield {
                "id": hashlib.sha1(f"{src.name}/{item.key}".encode()).hexdigest()[:16], "key": item.key,
                "source": src.name, "licence": src.licence or info.licence, "group": f"{src.name}/{item.group}",
                "text": item.text or "", "image_path": item.image_path, "image": item.image_bytes, "task": item.task,
                "question": item.question, "options": list(item.options), "answer": item.answer, "label": label,
                "rationale": item.rationale, "source_split": item.source_split, "meta": item.meta,
            }
        per_source[src.name] = {"adapter": src.adapter, "root": src.root, "licence": src.licence or info.licence,
                                "records": n, "homepage": info.homepage}


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
    Only images that exist nowhere on disk (cut from a wheel's image) keep their bytes. ``as_is``: the stored
    bytes are the original file's (``encode_image`` kept them), so writing reads them without decoding again,
    and checks that they still hash to ``sha256``."""

    sha256: str
    path: str | None = None
    data: bytes | None = None
    max_side: int = 1024
    as_is: bool = False

    def read(self) -> bytes:
        raw = self.data if self.data is not None else Path(self.path).read_bytes()
        if self.as_is:
            if hashlib.sha256(raw).hexdigest() != self.sha256:
                raise PathVLMError(f"{self.path or 'an image'} changed while the build ran (its sha256 is no longer "
                                   f"{self.sha256[:12]}...): run the build again")
            return raw
        return encode_image(raw, self.max_side, max_pixels=None)[0]


def _load_one(task):
    """One distinct image (a path, or bytes cut from a wheel's image): ``(sha256, dHash, None, stored as is)`` or
    ``(None, reason, message, False)``. Runs in a worker process with ``--workers``."""
    path, data, max_side, max_pixels = task
    try:
        raw = data if data is not None else Path(path).read_bytes()
        stored, img = encode_image(raw, max_side, max_pixels)
        return hashlib.sha256(stored).hexdigest(), dedup.dhash(img), None, stored is raw
    except (OSError, ImageError) as e:
        reason = "missing image" if isinstance(e, FileNotFoundError) else "unreadable image"
        return None, reason, str(e), False


class ImageStage:
    """Decode, hash and check every distinct image of a chunk of rows once (on the build's pool, or as tasks of
    ``engine``: ``pathvlm.data.engine``), then attach the results; counts add up over the chunks."""

    def __init__(self, recipe: RecipeConfig, malformed: Counter, examples: list, pool: Pool, engine: str = "local"):
        self.recipe, self.malformed, self.examples, self.pool, self.engine = recipe, malformed, examples, pool, engine
        self.n_in = self.n_out = 0
        self._loaded_keys: list[np.ndarray] = []

    @staticmethod
    def tasks(rows: list[dict], max_side: int, max_pixels: int | None) -> tuple[dict, list]:
        """The distinct images of ``rows``: key (path, or sha256 of bytes) -> task index, and ``_load_one``'s tasks."""
        keys, tasks = {}, []
        for r in rows:
            if r["image"] is None and not r["image_path"]:
                continue
            key = r["image_path"] or hashlib.sha256(r["image"]).hexdigest()
            if key not in keys:
                keys[key] = len(tasks)
                tasks.append((r["image_path"] if r["image"] is None else None, r["image"], max_side, max_pixels))
        return keys, tasks

    def run(self, rows: list[dict], loaded: list | None = None) -> list[dict]:
        """``rows`` with their images loaded (``loaded``: ``_load_one`` of ``tasks(rows)``, when already computed)."""
        c = self.recipe.curation
        keys, tasks = self.tasks(rows, c.max_image_side, c.max_pixels)
        if loaded is None:
            from pathvlm.data.engine import engine_map  # "local": the build's pool

            loaded = (self.pool.map(_load_one, tasks) if self.engine == "local"
                      else engine_map(_load_one, tasks, self.engine, self.pool.workers))
        cache = {}
        for key, i in keys.items():
            digest, extra, err, as_is = loaded[i]
            path, data = tasks[i][0], tasks[i][1]
            if digest is None:
                cache[key] = (None, extra, err)
            else:
                cache[key] = (ImageRef(digest, path=path, data=data, max_side=c.max_image_side, as_is=as_is), digest,
                              extra)
        # the distinct images over the whole build: 8-byte digests of the keys that loaded, counted at the end
        self._loaded_keys.append(np.array([hashlib.blake2b(k.encode(), digest_size=8).digest()
                                           for k, v in cache.items() if v[0] is not None], "V8"))
        out = []
        for r in rows:
            if r["image"] is None and not r["image_path"]:
                if self.recipe.require_images:
                    self.malformed[f"{r['source']}: missing image"] += 1
                    continue
                out.append({**r, "image_sha256": "", "dhash": None})
                continue
            data, digest, extra = cache[r["image_path"] or hashlib.sha256(r["image"]).hexdigest()]
            if data is None:
                if self.recipe.require_images:
                    self.malformed[f"{r['source']}: {digest}"] += 1
                    if len(self.examples) < 20:
                        self.examples.append({"source": r["source"], "reason": digest, "where": str(extra)[:200]})
                    continue
                out.append({**r, "image": None, "image_sha256": "", "dhash": None})
                continue
            out.append({**r, "image": data, "image_sha256": digest, "dhash": extra})
        self.n_in += len(rows)
        self.n_out += len(out)
        return out

    def log_to(self, log: StageLog) -> None:
        keys = np.concatenate(self._loaded_keys) if self._loaded_keys else np.zeros(0, "V8")
        log.add("load_images", self.n_in, self.n_out, distinct_images=len(np.unique(keys)))


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


CURATED = "_curated"  # a row's precomputed caption curation, removed before the row goes further


def _prepare(task) -> tuple[list[dict], list]:
    """A few rows' images loaded and captions curated, on a worker of the build's pool, in order: the rows back with
    ``_load_one``'s results, and each caption's ``_curate_caption`` result under ``CURATED`` (when the caption filter
    is a pure function; the model filter runs in the main process). The main process then counts them exactly as
    ``ImageStage.run`` and ``CaptionStage.run`` would have computed them."""
    rows, max_side, max_pixels, curate = task
    _, tasks = ImageStage.tasks(rows, max_side, max_pixels)
    loaded = [_load_one(t) for t in tasks]
    if curate is not None:
        rows = [{**r, CURATED: curate(r["text"])} if r["task"] == "caption" else r for r in rows]
    return rows, loaded


class CaptionStage:
    """Captions cleaned and filtered (``_curate_caption``) chunk by chunk, on the build's pool unless the visual filter
    is the model (it runs here, in order); the same rows, counts and examples whatever the worker or chunk count."""

    def __init__(self, recipe: RecipeConfig, malformed: Counter, pool: Pool):
        c = self.c = recipe.curation
        self.malformed, self.pool = malformed, pool
        model_filter = None
        if c.visual_filter == "model":
            from pathvlm.clip.factory import create_clip

            model, _, tok = create_clip(c.model_source)
            model_filter = text_clean.ModelSentenceFilter(model, tok)
        elif c.visual_filter not in ("none", "rule"):
            raise PathVLMError(f"visual_filter must be none, rule or model, not {c.visual_filter!r}")
        self.on_pool = model_filter is None
        rule = None if c.visual_filter == "none" else (model_filter or text_clean.is_visual_sentence)
        self.curate = functools.partial(_curate_caption, clean=c.clean_captions, rule=rule,
                                        english_only=c.english_only, min_words=c.min_words, max_words=c.max_words)
        self.kept_s = self.removed_s = self.changed = 0
        self.captions = self.after_clean = self.after_visual = self.after_lang = self.n_out = 0
        self.examples = {"kept": [], "removed": []}

    def run(self, rows: list[dict]) -> list[dict]:
        """``rows`` with their captions curated; a row may carry its caption's ``_curate_caption`` result already
        (``CURATED``, computed with the images in ``_prepare``)."""
        c, examples = self.c, self.examples
        captions = [r["text"] for r in rows if r["task"] == "caption" and CURATED not in r]
        # the rule is a pure function: on the pool for large chunks; the model filter runs here
        results = iter(self.pool.map(self.curate, captions, None if self.on_pool and len(captions) >= 2000 else 1))
        out = []
        for r in rows:
            if r["task"] != "caption":
                out.append(r)
                continue
            stage, text, was_changed, kept, removed, cleaned = r.pop(CURATED) if CURATED in r else next(results)
            self.changed += was_changed
            if stage == "empty":
                self.malformed[f"{r['source']}: empty caption"] += 1
                continue
            self.after_clean += 1
            if c.visual_filter != "none":
                self.kept_s += len(kept)
                self.removed_s += len(removed)
                shown = cleaned[:300]  # the caption before the visual filter, as the examples always showed it
                if removed and len(examples["removed"]) < 8 and all(e["caption"] != shown for e in examples["removed"]):
                    examples["removed"].append({"caption": shown, "removed": removed[:3]})
                if kept and len(examples["kept"]) < 8 and all(e["caption"] != shown for e in examples["kept"]):
                    examples["kept"].append({"caption": shown, "kept": kept[:3]})
            if stage == "visual":
                continue
            self.after_visual += 1
            if stage == "language":
                continue
            self.after_lang += 1
            if stage == "length":
                continue
            self.n_out += 1
            out.append({**r, "text": text})
        self.captions += sum(1 for r in rows if r["task"] == "caption")
        return out

    def log_to(self, log: StageLog, card: dict) -> None:
        c = self.c
        log.add("clean_captions", self.captions, self.after_clean, changed=self.changed)
        log.add(f"visual_filter ({c.visual_filter})", self.after_clean, self.after_visual,
                sentences_kept=self.kept_s, sentences_removed=self.removed_s)
        log.add("language_filter", self.after_visual, self.after_lang)
        log.add("length_filter", self.after_lang, self.n_out, min_words=c.min_words, max_words=c.max_words)
        card["visual_filter"] = {"mode": c.visual_filter, "sentences_kept": self.kept_s,
                                 "sentences_removed": self.removed_s, "examples": self.examples}


def curate_text(rows, recipe, malformed, log: StageLog, card: dict, workers: int = 1):
    """``CaptionStage`` on one list of rows."""
    with Pool(workers) as pool:
        stage = CaptionStage(recipe, malformed, pool)
        out = stage.run(rows)
    stage.log_to(log, card)
    return out


@dataclass
class Curated:
    """The rows that survive deduplication, as indices into the spill (in reading order), with their merged
    groups: ``group[k]`` indexes ``group_names`` for row ``rows[k]``."""

    rows: np.ndarray
    group: np.ndarray
    group_names: np.ndarray
    close_hashes: np.ndarray | None = None  # the near-duplicate search's close pairs of dHash values, for the audit


def _first_per_value(values: np.ndarray) -> np.ndarray:
    """Positions of each distinct value's first occurrence, in position order."""
    _, first = np.unique(values, return_index=True)
    return np.sort(first)


def deduplicate(cols: dict, recipe: RecipeConfig, spill: RowSpill, log: StageLog, card: dict,
                workers: int = 1) -> Curated:
    c = recipe.curation
    n_in = len(cols["sort_id"])
    idx = np.arange(n_in)
    # label conflicts: one image (identical bytes) labelled as two classes, e.g. a tile filed under both Normal and
    # OSCC: no label can be trusted, so every copy goes (counted in the card)
    conflicts = np.zeros(0, np.int64)
    if c.drop_label_conflicts:
        labelled = idx[(cols["task"] == cols["task_codes"].get("classification", -1)) & cols["has_image"]]
        images = cols["img"][labelled]
        pairs = dedup.unique_pairs(images, cols["label"][labelled])
        per_image = np.bincount(pairs[:, 0], minlength=int(images.max()) + 1 if len(images) else 0)
        conflicts = labelled[per_image[images] > 1]
        idx = np.setdiff1d(idx, conflicts, assume_unique=True)
    # exact duplicates: same image bytes and same text / question
    exact = 0
    if c.drop_exact_duplicates:
        kept = idx[_first_per_value(cols["dup_key"][idx])]
        exact, idx = len(idx) - len(kept), kept
    del cols["dup_key"]  # no later stage reads it: 16 bytes a row back before the near-duplicate search
    # near-duplicate images (dHash): one cluster -> one group, so they land in the same split
    with_image = idx[cols["has_image"][idx]]
    img_ids, img_first, img_of = np.unique(cols["img"][with_image], return_index=True, return_inverse=True)
    near = dedup.near_duplicates(cols["dhash"][with_image[img_first]], c.image_near_duplicate_bits, workers=workers)
    root_img = dedup.duplicate_clusters(len(img_ids), near.edges)[img_of]  # per with_image row
    # one image cluster can join several groups and one group several clusters: the connected components of the
    # groups (dedup.duplicate_clusters) merge them transitively, each into its smallest name
    group_names, group_of = np.unique(cols.pop("group")[idx], return_inverse=True)  # the names replace the column
    pos = np.searchsorted(idx, with_image)
    pairs = dedup.unique_pairs(root_img, group_of[pos])  # (cluster root, group), sorted
    first_group = np.full(len(img_ids), -1, np.int64)
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]) if len(pairs) else np.zeros(0, np.int64)
    first_group[pairs[starts, 0]] = pairs[starts, 1]
    link = pairs[pairs[:, 1] != first_group[pairs[:, 0]]] if len(pairs) else pairs
    links = np.stack([first_group[link[:, 0]], link[:, 1]], 1)
    group_root = dedup.duplicate_clusters(len(group_names), links)
    merged = int((group_root != np.arange(len(group_names))).sum())
    group = group_root[group_of]
    near_dropped = 0
    if c.drop_near_duplicate_images:
        drop = np.zeros(len(idx), bool)
        drop[pos] = root_img != img_of
        near_dropped = int(drop.sum())
        idx, group = idx[~drop], group[~drop]
    # near-duplicate captions (SimHash), reported
    caps = idx[(cols["task"][idx] == cols["task_codes"].get("caption", -1)) & cols["has_text"][idx]] \
        if c.text_near_duplicates else np.zeros(0, np.int64)
    texts = [spill.read(int(i))["text"] for i in caps]
    text_near = dedup.caption_near_duplicates(texts, c.text_near_duplicate_jaccard, workers=workers)
    log.add("deduplicate", n_in, len(idx), exact_duplicates=exact, **({"label_conflicts_dropped": len(conflicts)}
                                                                       if c.drop_label_conflicts else {}),
            near_duplicate_image_pairs=near.pair_count,
            groups_merged=merged, near_duplicates_dropped=near_dropped,
            near_duplicate_caption_pairs=text_near.pair_count if c.text_near_duplicates else "not searched")
    if c.drop_label_conflicts:
        rows = [spill.read(int(i)) for i in conflicts]
        card["label_conflicts"] = {"rows_dropped": len(conflicts), "images": len(np.unique(cols["img"][conflicts])),
                                   "examples": sorted({f"{r['source']}/{r['key']} ({r['label']})" for r in rows})[:30]}
    card["duplicates"] = {"exact_rows": exact, "near_duplicate_image_pairs": near.pair_count,
                          "groups_merged_by_image_similarity": merged,
                          "near_duplicate_images_dropped": near_dropped,
                          "near_duplicate_caption_pairs": text_near.pair_count if c.text_near_duplicates else None,
                          "caption_pair_examples": [[texts[i][:120], texts[j][:120]] for i, j in text_near.edges[:3]]}
    return Curated(idx, group, group_names, near.value_pairs)


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's ``malloc_trim``); False where there is no glibc.

    The whole-dataset stages free their columns before the writers start, but glibc keeps what numpy freed in
    its heap, so the process stays at the stages' size. Profiled at 1M rows: 0.57 GB resident before the trim,
    0.28 GB after it, and the writers then peaked at 0.42 GB instead of 0.61."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols, libc's among them
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows: no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _group_split_order(names: np.ndarray, seed: int) -> np.ndarray:
    """Groups in the order ``splits.assign_splits`` cuts them: by the sha256 of ``seed:name``."""
    prefix = f"{seed}:".encode()
    keys = np.empty(len(names), "S32")  # filled in place: a list of a million digests first would be 70 MB more
    for i, g in enumerate(names):
        keys[i] = hashlib.sha256(prefix + bytes(g)).digest()
    return np.argsort(keys, kind="stable")


def assign_group_splits(counts: np.ndarray, names: np.ndarray, ratios: dict, seed: int) -> np.ndarray:
    """Split index (into ``ratios``) for each group, as ``splits.assign_splits`` gives it for groups of ``counts``
    rows: whole groups in seeded-hash order, cut at the cumulative ratios."""
    total = sum(ratios.values())
    if total <= 0 or any(r < 0 for r in ratios.values()):
        raise PathVLMError(f"split ratios must be non-negative and sum above 0: {ratios}")
    order = _group_split_order(names, seed)
    n = int(counts.sum())
    bounds = np.cumsum([r / total for r in ratios.values()]) * n
    seen = np.cumsum(counts[order]) - counts[order]  # rows in the groups before each one
    out = np.empty(len(names), np.int64)
    out[order] = np.searchsorted(bounds[:-1] - 1e-9, seen, side="right")
    return out


def _values_per_key(keys: np.ndarray, values: np.ndarray):
    """``(first position, distinct values)`` for each key with more than one distinct value, in order of the key's
    first position."""
    if not len(keys):
        return []
    pairs = dedup.unique_pairs(keys, values)
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    ends = np.r_[starts[1:], len(pairs)]
    many = {int(pairs[a, 0]): pairs[a:b, 1] for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1])}
    if not many:
        return []
    firsts = {}
    for i, k in enumerate(keys.tolist()):
        if k in many and k not in firsts:
            firsts[k] = i
    return [(firsts[k], many[k].tolist()) for k in sorted(many, key=firsts.get)]


def split_rows(cols: dict, cur: Curated, recipe: RecipeConfig, spill: RowSpill, log: StageLog, card: dict):
    """Each kept row's split (``cur.rows`` already in output order): ``(split codes, split names)``."""
    s = recipe.splits
    group = cur.group
    if s.use_source_splits:
        named = [{"validation": "val", "dev": "val"}.get(v, v) or "train" for v in cols["source_split_names"]]
        names = sorted(set(named))
        split = np.array([names.index(v) for v in named], np.int64)[cols["source_split"][cur.rows]]
    else:
        names = list(s.ratios)
        present, inverse, counts = np.unique(group, return_inverse=True, return_counts=True)
        split = assign_group_splits(counts, cur.group_names[present], s.ratios, s.seed)[inverse]
    sizes = {names[k]: int(v) for k, v in zip(*np.unique(split, return_counts=True))}
    groups = {names[k]: int(v) for k, v in zip(*np.unique(dedup.unique_pairs(split, group)[:, 0],
                                                           return_counts=True))}
    log.add("group_split", len(split), len(split), rows=dict(sorted(sizes.items())), groups=dict(sorted(groups.items())))
    # audit: groups, exact images, near-duplicate images across splits
    report = LeakageReport()
    if s.use_source_splits:  # whole groups are assigned otherwise, so no group can straddle splits
        for k, spl in _values_per_key(group, split):
            report.shared_groups[cur.group_names[group[k]].decode()] = sorted(names[i] for i in spl)
    pos = np.flatnonzero(cols["has_image"][cur.rows])
    _, first_of, img_of = np.unique(cols["img"][cur.rows[pos]], return_index=True, return_inverse=True)
    for k, spl in _values_per_key(img_of, split[pos]):
        report.shared_images.append((spill.read(int(cur.rows[pos[k]]))["image_sha256"], sorted(names[i] for i in spl)))
    first_row = pos[first_of]
    # the kept images are a subset of those deduplication searched: their close pairs are among its pairs
    near = dedup.near_duplicates(cols["dhash"][cur.rows[first_row]], recipe.curation.image_near_duplicate_bits,
                                 known_pairs=cur.close_hashes)
    a, b = first_row[near.edges[:, 0]], first_row[near.edges[:, 1]]
    across = split[a] != split[b]
    for i, j in zip(a[across].tolist(), b[across].tolist()):
        report.near_duplicate_pairs.append((spill.read(int(cur.rows[i]))["id"], spill.read(int(cur.rows[j]))["id"]))
    card["leakage_audit"] = report.summary()
    card["splits"] = {"rows": dict(sorted(sizes.items())), "groups": dict(sorted(groups.items()))}
    if s.on_leak == "fail":
        require_no_leakage(report)
    return split, names


CHUNK_ROWS = 1_000  # rows read, loaded and curated together (one task of the pool) before they go to the spill
ENGINE_CHUNK_ROWS = 200_000  # an engine's tasks carry their own start-up cost: fewer, larger chunks


def _chunks(rows, size: int):
    chunk = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_recipe(recipe: RecipeConfig, out: str | Path, progress: bool = True, recipe_path: str | None = None,
                 workers: int = 1, engine: str = "local") -> dict:
    """Build ``recipe`` into ``out``. ``workers`` processes decode and hash images, hash captions and write shards
    (``pathvlm.data.parallel``); the output files and data card are byte-identical for any worker count.
    ``engine`` ``datatrove`` or ``ray`` runs the image stage on that engine instead (``pathvlm.data.engine``).

    Memory stays flat as the sources grow: rows are read, loaded and curated a chunk at a time and kept on disk
    (``pathvlm.data.spill``); deduplication, splits and the audit run on a few dozen bytes of columns per row; the
    builders and writers take the rows back one at a time, in order."""
    workers = resolve_workers(workers)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log, malformed, read_examples, image_examples = StageLog(), Counter(), [], []
    card: dict = {"recipe": recipe.name, "description": recipe.description, "recipe_file": recipe_path,
                  "config": asdict(recipe)}
    spill_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.rows-", dir=out.parent))
    spill = RowSpill(spill_dir / "rows.pkl")
    try:
        with Pool(workers) as pool:
            return _build(recipe, out, partial, progress, workers, engine, pool, spill, log, malformed,
                          read_examples, image_examples, card)
    finally:
        spill.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


def _build(recipe, out, partial, progress, workers, engine, pool, spill, log, malformed, read_examples,
           image_examples, card):
    # 1. stream: read, load images, curate captions, a chunk at a time, into the spill and the columns
    per_source: dict = {}
    source_index = {s.name: i for i, s in enumerate(recipe.sources)}
    columns = RowColumns()
    images = ImageStage(recipe, malformed, image_examples, pool, engine)
    captions = CaptionStage(recipe, malformed, pool)
    n_read = 0
    read_malformed = Counter()

    def keep(chunk, loaded=None):
        chunk = captions.run(images.run(chunk, loaded))
        columns.add_chunk(chunk, source_index)
        for r in chunk:
            spill.append(r)

    rows = read_sources(recipe, read_malformed, read_examples, progress, per_source)
    if engine == "local":
        # chunks go to the pool as they are read (images and captions there), a few in flight, and come back in order
        # while this process reads on and keeps the finished ones
        c = recipe.curation
        curate = captions.curate if captions.on_pool else None
        in_flight: deque = deque()
        for chunk in _chunks(rows, CHUNK_ROWS):
            n_read += len(chunk)
            in_flight.append(pool.submit(_prepare, (chunk, c.max_image_side, c.max_pixels, curate)))
            while len(in_flight) > 2 * pool.workers + 2:
                keep(*in_flight.popleft().result())
        while in_flight:
            keep(*in_flight.popleft().result())
    else:
        for chunk in _chunks(rows, ENGINE_CHUNK_ROWS):
            n_read += len(chunk)
            keep(chunk)
    spill.finish_writing()
    card["sources"] = per_source
    log.add("read_sources", sum(v["records"] for v in per_source.values()) + sum(read_malformed.values()), n_read)
    if not n_read:
        raise PathVLMError("the recipe's sources gave no usable rows: " + json.dumps(dict(read_malformed)))
    malformed.update(read_malformed)
    images.log_to(log)
    captions.log_to(log, card)
    cols = columns.freeze()
    cols["task_codes"] = columns.tasks.index
    cols["source_split_names"] = columns.source_splits.names
    # 2. whole-dataset stages on the columns
    cur = deduplicate(cols, recipe, spill, log, card, workers)
    source_rank = np.argsort(np.argsort([s.name for s in recipe.sources], kind="stable"))
    order = np.lexsort((cols["sort_id"][cur.rows], source_rank[cols["source"][cur.rows]]))
    cur = Curated(cur.rows[order], cur.group[order], cur.group_names, cur.close_hashes)
    split, split_names = split_rows(cols, cur, recipe, spill, log, card)
    # questions and distractors draw on the classes this build labels (adding a class elsewhere changes nothing here)
    is_class = cols["task"][cur.rows] == cols["task_codes"].get("classification", -1)
    labels = {columns.labels.names[k] for k in np.unique(cols["label"][cur.rows][is_class]).tolist()}
    kb = KnowledgeBase.load(recipe.knowledge).subset(labels)
    # the builders need only the kept rows, their groups and splits: the columns and the audit's pairs go before
    # the writers' libraries come in, so the two do not add up at the peak
    cols.clear()
    cur = Curated(cur.rows, cur.group, cur.group_names)
    release_freed_memory()
    # 3. the builders and writers, reading the rows back in order
    from pathvlm.data.writer import SplitWriter, checksums

    outputs = {}
    for name in recipe.builders:
        kwargs = {"captions_per_image": recipe.captions_per_image} if name == "clip" else {}
        writers: dict[str, SplitWriter] = {}
        examples, built = [], 0
        for k in _progress(range(len(cur.rows)), total=len(cur.rows), desc=f"building {name}", enabled=progress):
            row = spill.read(int(cur.rows[k]))
            row["group"] = cur.group_names[cur.group[k]].decode()
            row["split"] = split_names[split[k]]
            for b in BUILDERS[name]([row], kb, recipe.seed, **kwargs):
                if len(examples) < recipe.examples_in_card:
                    examples.append(_example(b))
                built += 1
                if b["split"] not in writers:
                    writers[b["split"]] = SplitWriter(partial / name, b["split"], pool, recipe.webdataset)
                writers[b["split"]].add(b)
        outputs[name] = {}
        for split_name in sorted(writers):
            writers[split_name].close()
            outputs[name][split_name] = writers[split_name].count
        log.add(f"build_{name}", len(cur.rows), built)
        card.setdefault("examples", {})[name] = examples
    card["outputs"] = outputs
    card["stages"] = log.stages
    card["malformed"] = {"counts": dict(sorted(malformed.items())), "examples": (read_examples + image_examples)[:20]}
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
