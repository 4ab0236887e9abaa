"""Labelled evaluation sets the field reports zero-shot numbers on, read in their published layouts:
PatchCamelyon (HDF5), SICAPv2 (partition spreadsheets + images/) and the Kriegsmann et al. 2022
skin tissue tiles (``tiles-v2.csv`` + ``tiles/<class>/``)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

from pathvlm.data.sources.registry import Malformed, Record, adapter
from pathvlm.data.sources._io import iter_table, require
from pathvlm.errors import PathVLMError


def _png(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@adapter("pcam", "CC0-1.0 (PCam, Veeling et al. 2018)", "PatchCamelyon: camelyonpatch_level_2_split_<split>_{x,y}.h5 "
         "(96x96 RGB patches, label 1 = metastasis in the centre 32x32)", "https://github.com/basveeling/pcam")
def read_pcam(root, split: str = "test", limit: int | None = None) -> Iterator[Record | Malformed]:
    """``camelyonpatch_level_2_split_<split>_x.h5`` (dataset ``x``: N x 96 x 96 x 3 uint8) and ``_y.h5``
    (dataset ``y``: N x 1 x 1 x 1). The Zenodo files come gzipped: gunzip them first. The optional
    ``_meta.csv`` (coord_y, coord_x, tumor_patch, center_tumor_patch, wsi) gives the slide as group."""
    from pathvlm.imports import require_package

    h5py = require_package("h5py", "eval")
    root = Path(root)
    stem = f"camelyonpatch_level_2_split_{split}"
    x_path, y_path = root / f"{stem}_x.h5", root / f"{stem}_y.h5"
    for p in (x_path, y_path):
        if not p.exists() and p.with_name(p.name + ".gz").exists():
            raise PathVLMError(f"{p.name}.gz is still compressed: gunzip {p}.gz first")
        require(p, "PCam file")
    slides = []
    meta = root / f"{stem}_meta.csv"
    if meta.exists():
        slides = [row.get("wsi") or "" for row in iter_table(meta)]
    with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
        if "x" not in fx or "y" not in fy:
            raise PathVLMError(f"{x_path.name} / {y_path.name}: expected datasets 'x' and 'y'")
        x, y = fx["x"], fy["y"]
        if x.shape[0] != y.shape[0]:
            raise PathVLMError(f"{x_path.name} has {x.shape[0]} patches but {y_path.name} has {y.shape[0]} labels")
        n = x.shape[0] if limit is None else min(limit, x.shape[0])
        labels = y[:n].reshape(n, -1)[:, 0]
        for i in range(n):
            slide = slides[i] if i < len(slides) and slides[i] else f"patch-{i}"
            yield Record(key=f"pcam-{split}-{i:06d}", group=f"pcam-{slide}", image_bytes=_png(x[i]),
                         task="classification", label=str(int(labels[i])), source_split=split,
                         meta={"index": i, "wsi": slide})


SICAP_COLUMNS = ("NC", "G3", "G4", "G5")


def _read_sheet(path: Path) -> list[dict]:
    if path.suffix in (".xlsx", ".xls"):
        from pathvlm.imports import require_package

        openpyxl = require_package("openpyxl", "eval")
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = list(wb.active.iter_rows(values_only=True))
        wb.close()
        if not rows:
            return []
        head = [str(h).strip() if h is not None else "" for h in rows[0]]
        return [{**dict(zip(head, r)), "_line": n} for n, r in enumerate(rows[1:], 2)]
    return [r for r in iter_table(path) if not isinstance(r, Malformed)]


@adapter("sicapv2", "CC BY 4.0 (SICAPv2, Silva-Rodriguez et al. 2020)", "SICAPv2 prostate patches: "
         "partition/<Test|Validation>/<split>.xlsx (image_name + NC/G3/G4/G5 one-hot) and images/",
         "https://data.mendeley.com/datasets/9xxm58dvs3/2")
def read_sicapv2(root, partition: str = "Test", split: str = "Test", image_dir: str = "images") -> Iterator[Record | Malformed]:
    """``partition/Test/Test.xlsx`` (the held-out patients) or ``Train.xlsx``; ``partition/Validation/Val<k>/``
    for the cross-validation folds. Columns ``image_name, NC, G3, G4, G5[, G4C]``; the label is the
    one-hot column set to 1 (G4C, cribriform, is a sub-type of G4). A csv with the same columns works
    too. Patches of one biopsy (the name's prefix before ``_Block``) share a group."""
    root = Path(root)
    base = root / "partition" / partition
    sheet = next((base / f"{split}{ext}" for ext in (".xlsx", ".csv") if (base / f"{split}{ext}").exists()), None)
    if sheet is None:
        require(base / f"{split}.xlsx", "SICAPv2 partition sheet")
    for row in _read_sheet(sheet):
        where = f"{sheet.name}:{row.get('_line')}"
        name = str(row.get("image_name") or "").strip()
        hot = [c for c in SICAP_COLUMNS if str(row.get(c, "0")).strip() in ("1", "1.0", "True")]
        if not name or len(hot) != 1:
            yield Malformed("missing image name or not exactly one of NC/G3/G4/G5 set", where)
            continue
        yield Record(key=Path(name).stem, group=f"sicapv2-{name.split('_Block')[0]}", image_path=str(root / image_dir / name),
                     task="classification", label=hot[0], source_split=split)


@adapter("skincancer", "see the heiDATA record doi:10.11588/data/7QCR8S (research data; terms not verified offline)", "Kriegsmann et al. 2022 skin tissue tiles: "
         "data/tiles-v2.csv (file, class, set) + data/tiles/<class>/", "https://doi.org/10.11588/data/7QCR8S")
def read_skincancer(root, table: str = "data/tiles-v2.csv", split: str = "Test") -> Iterator[Record | Malformed]:
    """``tiles-v2.csv`` rows: ``file`` (``data/tiles/<class>/<name>``, relative to the dataset root),
    ``class`` (e.g. ``nontumor_skin_dermis_dermis``, ``tumor_skin_epithelial_bcc``), ``set``
    (Train / Validation / Test) and ``malignicy``. The slide id is in the tile name
    (``<class>_<slide>_<n>.jpg``, e.g. ``..._ws_44_1.jpg``) and is the group."""
    root = Path(root)
    for row in iter_table(require(root / table, "SkinCancer tile table")):
        if isinstance(row, Malformed):
            yield row
            continue
        if split and str(row.get("set", "")).strip().lower() != split.lower():
            continue
        file, label = str(row.get("file") or "").strip(), str(row.get("class") or "").strip()
        if not file or not label:
            yield Malformed("missing file or class", f"{table}:{row['_line']}")
            continue
        stem = Path(file).stem
        slide = stem[len(label) + 1:].rsplit("_", 1)[0] if stem.startswith(label + "_") else stem
        yield Record(key=stem, group=f"skin-{slide or stem}", image_path=str(root / file), task="classification",
                     label=label, source_split=str(row.get("set", "")), meta={"malignancy": row.get("malignicy")})
