"""Gallery index builds at several sizes, to split a build's fixed start-up cost from its steady rate.

    python benchmarks/bench_index_scaling.py [--sizes 16 480 960] [--threads 2] [--workers 2] [--batch-size 4]
                                             [--encode-in-workers | --no-encode-in-workers]

Builds an index of the demo gallery's tiles (``pathvlm gallery build``; repeated to each size) with pathclip-nano,
median of 3 builds per size after a warm-up, and prints seconds per size, the marginal rate between the two
largest sizes (images/s once started) and the fixed cost (the small-size build). About 1 minute on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="a folder of tiles (default: the demo gallery)")
    ap.add_argument("--model", default="pathclip-nano")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 480, 960])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--encode-in-workers", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args(argv)

    from pathvlm.clip.factory import create_clip
    from pathvlm.gallery import default_gallery_dir
    from pathvlm.images import list_images
    from pathvlm.retrieval.index import GalleryIndex

    torch.set_num_threads(args.threads)
    model, preprocess, _ = create_clip(args.model)
    src = list_images(args.images or default_gallery_dir())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            for i in range(n):
                shutil.copy(src[i % len(src)], folder / f"{i:06d}{src[i % len(src)].suffix}")

            def build():
                with tempfile.TemporaryDirectory() as out:
                    t = time.perf_counter()
                    GalleryIndex.build(folder, Path(out) / "idx", model, preprocess, progress=False,
                                       num_workers=args.workers, batch_size=args.batch_size,
                                       encode_in_workers=args.encode_in_workers)
                    return time.perf_counter() - t

            build()
            results[n] = statistics.median(build() for _ in range(3))
            print(f"{n} images: {results[n]:.2f} s ({n / results[n]:.1f} img/s)", flush=True)
    small, a, b = min(args.sizes), *sorted(args.sizes)[-2:]
    print(f"\n{args.threads} thread(s), {args.workers} workers, batch {args.batch_size}, tower in the workers: "
          f"{args.encode_in_workers}; marginal rate {b - a} images / {results[b] - results[a]:.2f} s = "
          f"{(b - a) / (results[b] - results[a]):.1f} img/s; a {small}-image build takes {results[small]:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
