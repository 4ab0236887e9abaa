"""`pathvlm data build` at scale: a synthetic source in Quilt-1M's published layout (``quilt_1M_lookup.csv`` +
``quilt_1m/`` JPEG tiles) with real ARCH captions from ../shared/data/text/arch, built with the clip builder at
each ``--sizes``, once per ``--workers`` count; each build runs in its own process so its peak RSS is its own.

    python benchmarks/bench_data_build.py [--sizes 10000 100000 1000000] [--workers 1 2] [--root /tmp/pathvlm-scale]
                                          [--engines local datatrove ray]

Prints seconds, rows/s, cost per row relative to the smallest size, and peak RSS per build; with two worker
counts also the speed-up at each size and whether both builds wrote byte-identical files (checksums.json and the
data card). The source is generated once per size under ``--root`` (kept for reruns: about 2 KB per row on disk;
1M rows is about 2 GB and some minutes to generate), with planted problems a real crawl has: exact duplicate
files, near-duplicates (re-encoded JPEGs), and ``--alike-fraction`` of nearly blank tiles whose perceptual hashes
all agree (the near-duplicate search's worst case: a bucket holding a large share of the data).

At ``--hash-only-above`` rows (default 200,000) the caption near-duplicate report is skipped (``--set
TEXT_NEAR_DUP=false``); image near-duplicates are always searched.

Targets (issue 17): 2 workers >= 1.8x one; cost per row at 1M within 1.3x of 10k; peak memory flat.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPE = """name: scale-{n}
description: synthetic Quilt-1M-layout source with ARCH captions, for the scale benchmark
seed: 0
sources:
  - name: quilt
    adapter: quilt1m
    root: {root}
    licence: synthetic tiles; ARCH captions CC BY-NC-SA 4.0
curation:
  visual_filter: rule
  image_near_duplicate_bits: 4
  text_near_duplicates: {text_near}
splits:
  ratios: {{train: 0.98, val: 0.01, test: 0.01}}
  on_leak: warn
builders: [clip]
"""


def arch_captions(shared: Path) -> list[str]:
    data = json.loads((shared / "text" / "arch" / "captions_all.json").read_text())
    caps = [str(r.get("caption") or "").strip() for r in data.values()]
    return [c for c in caps if c]


def tile_jpeg(i: int, rng: np.random.Generator, size: int = 32, alike: bool = False) -> bytes:
    """A small H&E-coloured JPEG: pink stroma with purple nuclei blobs; ``alike`` tiles are nearly blank (their
    difference hashes all agree: a smooth shading), like empty background tiles of a slide."""
    from PIL import Image

    if alike:
        ramp = np.linspace(0, 40, size, dtype=np.float32)[None, :, None]  # a smooth left-to-right shading
        base = np.full((size, size, 3), (200, 190, 196), np.float32) + ramp + rng.normal(0, 0.6, (size, size, 3))
    else:
        base = np.empty((size, size, 3), np.float32)
        base[:] = (rng.uniform(200, 240), rng.uniform(140, 190), rng.uniform(190, 225))
        coarse = rng.random((4, 4, 1)).repeat(size // 4, 0).repeat(size // 4, 1)
        base -= coarse * np.array([60, 90, 30], np.float32)
        yy, xx = np.mgrid[:size, :size]
        for _ in range(int(rng.integers(3, 9))):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(1.5, 4)
            base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (90, 60, 150)
    buf = io.BytesIO()
    Image.fromarray(base.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def make_source(root: Path, n: int, captions: list[str], alike_fraction: float, seed: int = 0) -> Path:
    """``root/quilt_1M_lookup.csv`` + ``root/quilt_1m/<shard>/<id>.jpg``; returns root. Reused when complete."""
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{n} {alike_fraction} {seed}":
        return root
    rng = np.random.default_rng(seed)
    images = root / "quilt_1m"
    rows = []
    from tqdm.auto import tqdm

    for i in tqdm(range(n), desc=f"generating {n:,} tiles", unit="tile", mininterval=5):
        rel = f"{i // 10000:03d}/{i:07d}.jpg"
        path = images / rel
        if i % 10000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        r = rng.random()
        if i > 10 and r < 0.002:  # an exact duplicate file of an earlier tile (same caption row too)
            j = int(rng.integers(0, i))
            path.write_bytes((images / f"{j // 10000:03d}/{j:07d}.jpg").read_bytes())
            cap = rows[j][0]
        else:
            path.write_bytes(tile_jpeg(i, rng, alike=r < 0.002 + alike_fraction))
            cap = captions[i % len(captions)]
        rows.append((cap, rel, "openpath" if i % 3 else "pubmed", "train", "unknown"))
    with open(root / "quilt_1M_lookup.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "image_path", "subset", "split", "pathology"])
        w.writerows(rows)
    done.write_text(f"{n} {alike_fraction} {seed}")
    return root


def build(recipe: Path, out: Path, workers: int, engine: str = "local") -> dict:
    """One ``pathvlm data build`` in a child process: wall seconds and the peak RSS of the child and its workers
    together (proportional set size, sampled every 0.1 s with psutil)."""
    import psutil

    cmd = [sys.executable, "-m", "pathvlm", "data", "build", str(recipe), "--out", str(out), "--workers", str(workers),
           "--engine", engine, "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            # PSS: pages a forked worker shares with its parent count once, split between them
            rss = sum(p.memory_full_info().pss for p in [parent, *parent.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"build failed ({' '.join(cmd)}):\n{err[-3000:]}")
    card = json.loads((out / "data_card.json").read_text())
    rows = sum(sum(v.values()) for v in card["outputs"].values())
    return {"seconds": seconds, "rows_written": rows, "peak_rss_gb": peak / 1e9,
            "checksums": json.loads((out / "checksums.json").read_text()),
            "near_duplicate_image_pairs": card["duplicates"]["near_duplicate_image_pairs"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--root", default="/tmp/pathvlm-scale", help="where sources and builds go (mind the disk)")
    ap.add_argument("--shared", default=None, help="../shared/data (default: found beside the checkout)")
    ap.add_argument("--alike-fraction", type=float, default=0.05,
                    help="share of nearly blank tiles whose hashes all agree (bucket blow-up check)")
    ap.add_argument("--hash-only-above", type=int, default=200_000,
                    help="from this many rows on, skip the caption near-duplicate report (image hashes only)")
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "datatrove", "ray"],
                    help="also build with these engines (image stage as engine tasks, --workers max) and compare")
    ap.add_argument("--keep", action="store_true", help="keep the built datasets (sources are always kept)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from pathvlm.paths import shared_data

    shared = Path(args.shared) if args.shared else shared_data()
    if shared is None:
        raise SystemExit("needs ../shared/data (ARCH captions): pass --shared")
    captions = arch_captions(shared)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{len(captions)} ARCH captions; sources under {root}; load average {os.getloadavg()[0]:.2f} on "
          f"{os.cpu_count()} CPUs\n")
    results = []
    for n in sorted(args.sizes):
        src = make_source(root / f"source-{n}", n, captions, args.alike_fraction)
        recipe = root / f"recipe-{n}.yaml"
        recipe.write_text(RECIPE.format(n=n, root=src, text_near="false" if n >= args.hash_only_above else "true"))
        runs = {}
        jobs = [(w, "local") for w in args.workers] + [(max(args.workers), e) for e in args.engines if e != "local"]
        for w, engine in jobs:
            out = root / f"built-{n}-w{w}-{engine}"
            runs[w if engine == "local" else engine] = build(recipe, out, w, engine)
            if not args.keep:
                import shutil

                shutil.rmtree(out, ignore_errors=True)
        results.append({"rows": n, "runs": runs, "load_average": os.getloadavg()})
        base = results[0]
        print(f"| rows | workers | seconds | rows/s | cost per row vs {base['rows']:,} | peak RSS GB | rows written | "
              f"near-dup image pairs |" if len(results) == 1 else "", end="\n" if len(results) == 1 else "")
        if len(results) == 1:
            print("|---|---|---|---|---|---|---|---|")
        for w, r in runs.items():
            per_row = r["seconds"] / n
            base_per_row = base["runs"][w]["seconds"] / base["rows"]
            label = w if isinstance(w, int) else f"{max(args.workers)} ({w})"
            print(f"| {n:,} | {label} | {r['seconds']:.1f} | {n / r['seconds']:.0f} | {per_row / base_per_row:.2f}x | "
                  f"{r['peak_rss_gb']:.2f} | {r['rows_written']:,} | {r['near_duplicate_image_pairs']:,} |", flush=True)
    print()
    ws = sorted(args.workers)
    for res in results:
        if len(ws) > 1:
            a, b = res["runs"][ws[0]], res["runs"][ws[-1]]
            print(f"{res['rows']:,} rows: {ws[-1]} workers {a['seconds'] / b['seconds']:.2f}x {ws[0]}; byte-identical "
                  f"outputs and data card: {a['checksums'] == b['checksums']}; load average {res['load_average'][0]:.2f}")
        one = res["runs"][ws[0]]
        for e in args.engines:
            if e != "local":
                r = res["runs"][e]
                print(f"{res['rows']:,} rows, engine {e}: {one['seconds'] / r['seconds']:.2f}x {ws[0]} local worker(s); "
                      f"byte-identical to the local build: {r['checksums'] == one['checksums']}")
        for r in res["runs"].values():
            r.pop("checksums")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
