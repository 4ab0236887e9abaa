"""Image-caption sources: ARCH, Quilt-1M, OpenPath/PLIP, PMC-OA-style jsonl, PathGen-1.6M, PatchGastric,
and generic csv/jsonl pairs."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from pathvlm.data.sources.registry import Malformed, Record, adapter
from pathvlm.data.sources._io import iter_table, read_json, require

CC_BY_NC_SA = "CC BY-NC-SA 4.0"


@adapter("arch", CC_BY_NC_SA, "ARCH (Gamper & Rajpoot 2021): book and PubMed figure captions",
         "https://warwick.ac.uk/fac/cross_fac/tia/data/arch")
def read_arch(root, captions: str | None = None, subset: str = "both") -> Iterator[Record | Malformed]:
    """``books_set/captions.json`` and ``pubmed_set/captions.json`` (index -> {caption, uuid, figure_id,
    letter}), images in ``*_set/images/<uuid>.(png|jpg)``; or one combined file with ``source`` and
    ``path`` per row. Sub-figures of one figure share a group, so they never straddle splits."""
    root = Path(root)
    files = [root / captions] if captions else [
        p for p in (root / "books_set" / "captions.json", root / "pubmed_set" / "captions.json") if p.exists()]
    if not files:
        require(root / "books_set" / "captions.json", "ARCH captions")
    for file in files:
        data = read_json(file)
        default_source = "pubmed" if "pubmed" in file.parent.name else "books"
        for idx, row in data.items():
            if not isinstance(row, dict):
                yield Malformed("bad json row", f"{file.name}[{idx}]")
                continue
            source = row.get("source") or default_source
            if subset != "both" and source != subset:
                continue
            uuid = row.get("uuid") or str(idx)
            rel = row.get("path") or f"{file.parent.name}/images/{uuid}.{'png' if source == 'books' else 'jpg'}"
            fig = row.get("figure_id")
            group = f"arch-{source}-{fig}" if fig not in (None, "") else f"arch-{source}-{uuid}"
            yield Record(key=f"{source}-{uuid}", group=group, text=row.get("caption") or "",
                         image_path=str(root / rel), meta={"letter": row.get("letter"), "figure_id": fig, "source": source})


@adapter("quilt1m", "research use (Quilt-1M terms: YouTube-derived)", "Quilt-1M (Ikezogwo et al. 2023): lookup csv",
         "https://quilt1m.github.io")
def read_quilt1m(root, lookup: str = "quilt_1M_lookup.csv", image_dir: str = "quilt_1m",
                 group_column: str | None = None, subsets: list[str] | None = None) -> Iterator[Record | Malformed]:
    """``quilt_1M_lookup.csv`` (caption, image_path, subset, split, pathology, ...), images under ``image_dir``.
    Quilt frames from one video should share a group: pass ``group_column`` if your copy has one."""
    root = Path(root)
    images = root / image_dir
    for row in iter_table(root / lookup):
        if isinstance(row, Malformed):
            yield row
            continue
        if subsets and row.get("subset") not in subsets:
            continue
        path = row.get("image_path") or ""
        if not path:
            yield Malformed("missing image path", f"{lookup}:{row['_line']}")
            continue
        full = images / path  # one Path per row: a million-row lookup spends its time here
        group = row.get(group_column) if group_column else full.stem
        yield Record(key=full.stem, group=f"quilt-{group}", text=row.get("caption") or "",
                     image_path=str(full), source_split=row.get("split") or "",
                     meta={"subset": row.get("subset"), "pathology": row.get("pathology")})


def _pairs(root: Path, file: str, image_column: str, text_column: str, group_column: str | None,
           image_dir: str, prefix: str, group_fn=None) -> Iterator[Record | Malformed]:
    for row in iter_table(root / file):
        if isinstance(row, Malformed):
            yield row
            continue
        where = f"{file}:{row['_line']}"
        image = row.get(image_column)
        if not image:
            yield Malformed("missing image path", where)
            continue
        stem = Path(str(image)).stem
        group = row.get(group_column) if group_column else (group_fn(stem) if group_fn else stem)
        yield Record(key=f"{stem}-{row['_line']}", group=f"{prefix}-{group}", text=str(row.get(text_column) or ""),
                     image_path=str(root / image_dir / str(image)),
                     meta={k: v for k, v in row.items() if k not in (image_column, text_column, "_line")})


@adapter("openpath", "research use (Twitter terms; see PLIP)", "OpenPath/PLIP: image-text pairs from a csv",
         "https://github.com/PathologyFoundation/plip")
def read_openpath(root, file: str = "openpath.csv", image_column: str = "image", text_column: str = "text",
                  group_column: str | None = None, image_dir: str = ".") -> Iterator[Record | Malformed]:
    return _pairs(Path(root), file, image_column, text_column, group_column, image_dir, "openpath")


@adapter("pmc_oa", "CC BY (per article; PMC Open Access subset)", "PMC-OA-style jsonl: {image, caption} per line",
         "https://huggingface.co/datasets/axiong/pmc_oa")
def read_pmc_oa(root, file: str = "train.jsonl", image_column: str = "image", text_column: str = "caption",
                image_dir: str = "images") -> Iterator[Record | Malformed]:
    """Figures of one article (``PMC1234_...``) share a group."""
    return _pairs(Path(root), file, image_column, text_column, None, image_dir, "pmc",
                  group_fn=lambda stem: re.split(r"[_-]", stem)[0])


@adapter("pairs", "as declared in the recipe", "generic csv/tsv/jsonl/json image-caption pairs")
def read_pairs(root, file: str, image_column: str = "image", text_column: str = "text",
               group_column: str | None = None, image_dir: str = ".") -> Iterator[Record | Malformed]:
    return _pairs(Path(root), file, image_column, text_column, group_column, image_dir, "pairs")


@adapter("pathgen", "research use", "PathGen-1.6M (Sun et al. 2024): TCGA patch descriptions",
         "https://github.com/PathFoundation/PathGen-1.6M")
def read_pathgen(root, file: str = "PathGen-1.6M.json", image_dir: str = "images",
                 image_name: str = "{wsi_id}_{x}_{y}.png") -> Iterator[Record | Malformed]:
    """A JSON list of {wsi_id, position [x, y], caption}; patches of one TCGA patient share a group."""
    root = Path(root)
    for row in iter_table(root / file):
        if isinstance(row, Malformed):
            yield row
            continue
        wsi, pos = row.get("wsi_id") or "", row.get("position") or []
        if not wsi or len(pos) != 2:
            yield Malformed("missing slide id or position", f"{file}[{row['_line']}]")
            continue
        x, y = pos
        yield Record(key=f"{wsi}-{x}-{y}", group=f"tcga-{wsi[:12]}", text=row.get("caption") or "",
                     image_path=str(root / image_dir / image_name.format(wsi_id=wsi, x=x, y=y)),
                     meta={"wsi_id": wsi, "x": x, "y": y})


@adapter("patchgastric", "research use only", "PatchGastricADC22 (Tsuneki & Kanavati 2022): slide captions",
         "https://github.com/masatsuneki/histopathology-image-caption")
def read_patchgastric(root, captions: str = "captions.csv", patch_dir: str = "patches_captions",
                      max_patches_per_slide: int | None = None) -> Iterator[Record | Malformed]:
    """``captions.csv`` (id, subtype, text); patches ``{id}_{hash}.jpg``. Without the patches, one
    text-only record per slide."""
    root = Path(root)
    patches: dict[str, list[Path]] = {}
    if (root / patch_dir).is_dir():
        for p in sorted((root / patch_dir).glob("*.jpg")):
            patches.setdefault(p.stem.split("_")[0], []).append(p)
    for row in iter_table(root / captions):
        if isinstance(row, Malformed):
            yield row
            continue
        sid = row.get("id") or ""
        if not sid:
            yield Malformed("missing slide id", f"{captions}:{row['_line']}")
            continue
        files = patches.get(sid, [None])[: max_patches_per_slide or None]
        for p in files:
            yield Record(key=p.stem if p else sid, group=f"gastric-{sid}", text=row.get("text") or "",
                         image_path=str(p) if p else None, label=row.get("subtype") or "",
                         meta={"subtype": row.get("subtype")})
