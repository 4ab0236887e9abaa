"""PNG decoding on one core: Pillow (what pathvlm's loader uses) against pyspng (libspng), on a folder of tiles.

    python benchmarks/bench_png_decode.py [--folder ~/.cache/pathvlm/gallery] [--passes 3]   # pip install pyspng

Prints milliseconds per image for each decoder (median of ``--passes`` passes over every PNG, bytes already in
memory) and whether both give the same RGB pixels. Indexing's end-to-end ceiling depends on this figure
(docs/benchmarks.md#indexing-results); pyspng is not a pathvlm dependency.
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pillow_rgb(data: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(data))
    im.load()
    return np.asarray(im.convert("RGB"))


def time_per_image(fn, datas: list[bytes], passes: int) -> float:
    runs = []
    for _ in range(passes):
        start = time.perf_counter()
        for d in datas:
            fn(d)
        runs.append((time.perf_counter() - start) / len(datas))
    return statistics.median(runs) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=None, help="PNG tiles (default: the demo gallery, built if missing)")
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args(argv)
    if args.folder:
        folder = Path(args.folder)
    else:
        from pathvlm.gallery import build_gallery, default_gallery_dir

        folder = Path(default_gallery_dir())
        if not any(folder.glob("*.png")):
            build_gallery(folder)
    datas = [p.read_bytes() for p in sorted(folder.glob("*.png"))]
    if not datas:
        raise SystemExit(f"no PNG files in {folder}")
    print(f"{len(datas)} PNGs from {folder}; median of {args.passes} passes, bytes in memory, one thread")
    print("| decoder | ms per image |\n|---|---|")
    print(f"| Pillow {Image.__version__} | {time_per_image(pillow_rgb, datas, args.passes):.2f} |")
    try:
        import pyspng
    except ImportError:
        print("\npyspng is not installed (pip install pyspng): its row is skipped")
        return 0

    def spng_rgb(data: bytes) -> np.ndarray:
        return pyspng.load(data)[..., :3]

    print(f"| pyspng {getattr(pyspng, '__version__', '')} | {time_per_image(spng_rgb, datas, args.passes):.2f} |")
    same = all(np.array_equal(pillow_rgb(d), spng_rgb(d)) for d in datas)
    print(f"\nsame RGB pixels for every file: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
