"""Loading a task's samples: from a built recipe split (identical to what training held out) or from
a public dataset's layout through the data-recipe adapters."""
from __future__ import annotations

import os
from pathlib import Path

from pathvlm.errors import PathVLMError


def _expand(value: str) -> str:
    from pathvlm.data.config import expand_vars
    from pathvlm.paths import shared_data

    shared = shared_data()
    return expand_vars(value, {"SHARED": str(shared)} if shared else {})


def _built_rows(spec: dict, split: str) -> list[dict]:
    """Rows of ``<build_dir>/<dataset>/<split>``, building the recipe first if needed."""
    import pyarrow.parquet as pq

    build_dir = Path(_expand(spec.get("build_dir", "runs/data/nano")))
    dataset = spec.get("dataset", "clip")
    if not (build_dir / dataset).exists():
        from pathvlm.data.build import build_recipe
        from pathvlm.data.config import load_recipe

        recipe = spec.get("recipe")
        if not recipe:
            raise PathVLMError(f"{build_dir}/{dataset} does not exist and the task names no recipe to build it")
        build_recipe(load_recipe(recipe), build_dir, progress=False, recipe_path=recipe)
    rows = []
    for f in sorted((build_dir / dataset).glob(f"{split}-*.parquet")):
        rows += pq.read_table(f).to_pylist()
    sources = spec.get("sources")
    exclude = set(spec.get("exclude_sources", []))
    out, seen = [], set()
    for r in rows:
        if (sources and r["source"] not in sources) or r["source"] in exclude:
            continue
        key = r["id"].rsplit("-c", 1)[0]  # one row per image (labelled images carry several captions)
        if key in seen and not spec.get("keep_all_captions"):
            continue
        seen.add(key)
        out.append({"id": key, "image": r["image"]["bytes"], "label": r.get("label") or "", "text": r.get("text", ""),
                    "group": r["group"], "source": r["source"]})
    return out


def _adapter_rows(spec: dict, split: str) -> list[dict]:
    from pathvlm.data.sources import Malformed, get_adapter

    root = _expand(spec["root"]) if spec.get("root") else None
    if root and not os.path.exists(root):
        raise PathVLMError(f"dataset not found at {root}: {spec.get('download_hint', 'see the task description')}")
    info = get_adapter(spec["adapter"])
    label_map = spec.get("label_map", {})
    out = []
    for rec in info.read(root, **spec.get("options", {})) if root else info.read(**spec.get("options", {})):
        if isinstance(rec, Malformed):
            continue
        if spec.get("split_from") == "source" and rec.source_split and rec.source_split != split:
            continue
        data = rec.image_bytes if rec.image_bytes is not None else (Path(rec.image_path).read_bytes() if rec.image_path else None)
        out.append({"id": rec.key, "image": data, "label": label_map.get(rec.label, rec.label), "text": rec.text,
                    "group": rec.group, "source": spec["adapter"]})
    return sorted(out, key=lambda r: r["id"])


def load_split(spec: dict, split) -> list[dict]:
    """Samples of one split, or of several (``split: [train, val, test]``) concatenated."""
    if isinstance(split, (list, tuple)):
        return [row for s in split for row in load_split(spec, s)]
    kind = spec.get("kind", "built")
    if kind == "built":
        return _built_rows(spec, split)
    if kind == "adapter":
        return _adapter_rows(spec, split)
    raise PathVLMError(f"dataset kind must be built or adapter, not {kind!r}")
