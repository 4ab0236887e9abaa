"""``pathvlm data show``: print rows of a built dataset and plot its images with their text."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

from pathvlm.errors import PathVLMError


def _dataset_dir(folder: Path, dataset: str | None) -> Path:
    if list(folder.glob("*.parquet")):
        return folder
    names = [dataset] if dataset else [d for d in ("clip", "align", "sft", "grpo") if (folder / d).is_dir()]
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    raise PathVLMError(f"{folder}: no built dataset found (expected clip/, align/, sft/ or grpo/ with parquet shards)")


def load_split(folder: str | Path, dataset: str | None = None, split: str = "train", streaming: bool = False):
    """A built split as a ``datasets.Dataset`` (or an ``IterableDataset`` with ``streaming``, for
    sets larger than memory)."""
    from datasets import load_dataset

    d = _dataset_dir(Path(folder), dataset)
    files = sorted(str(p) for p in d.glob(f"{split}-*.parquet"))
    if not files:
        raise PathVLMError(f"{d}: no '{split}' shards (have: {sorted({p.name.split('-')[0] for p in d.glob('*.parquet')})})")
    return load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)


def _text_of(row: dict) -> str:
    if row.get("messages"):
        return " | ".join(c["text"] for m in row["messages"] for c in m["content"] if c.get("text"))
    if row.get("prompt") and isinstance(row["prompt"], list):
        q = " ".join(c["text"] for m in row["prompt"] for c in m["content"] if c.get("text"))
        return f"{q} -> {row.get('answer')}"
    return row.get("text") or row.get("target") or ""


def show(folder, dataset=None, split="train", n=4, plot=None) -> int:
    ds = load_split(folder, dataset, split)
    print(f"{len(ds)} rows; columns: {', '.join(ds.column_names)}")
    rows = [ds[i] for i in range(min(n, len(ds)))]
    for r in rows:
        view = {k: (f"<image {v.size[0]}x{v.size[1]}>" if hasattr(v, "size") else
                    [f"<image {x.size[0]}x{x.size[1]}>" for x in v] if k == "images" else v) for k, v in r.items()}
        print(json.dumps(view, default=str)[:1000])
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 5.5), squeeze=False)
        for ax, r in zip(axes[0], rows):
            img = r.get("image") or (r.get("images") or [None])[0]
            if img is not None:
                ax.imshow(img)
            ax.set_axis_off()
            ax.set_title("\n".join(textwrap.wrap(_text_of(r), 40)[:8]), fontsize=7, loc="left")
        fig.tight_layout()
        fig.savefig(plot, dpi=100)
        print(f"wrote {plot}")
    return 0
