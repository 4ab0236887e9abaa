"""PathCLIP training throughput: `pathvlm train clip` against open_clip's own loop (`open_clip_train`),
same model config, batch, images and captions, measured side by side in one run. Target: ratio >= 1.0.

    python benchmarks/bench_clip_train.py --data runs/data/nano [--steps 8] [--threads 1 2]

Both lock the text transformer (open_clip_train: --lock-text --lock-text-freeze-layer-norm) and train
the image tower and projections in fp32 on the CPU. Samples/s is batch / median step time after two
warm-up steps (open_clip_train's own per-step "Batch (t)" log; pathvlm's per-step timer).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import torch


def export_csv(data: str, n: int, folder: Path) -> Path:
    from train.clip.data import read_rows

    rows = read_rows(data, "train", exclude_sources=["histolytics_hgsc"])[:n]
    lines = ["filepath,title"]
    for i, r in enumerate(rows):
        p = folder / f"{i:05d}.jpg"
        p.write_bytes(r["image"])
        lines.append(f"{p},\"{r['text'].replace(chr(34), chr(39))}\"")
    csv = folder / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def register_config(folder: Path) -> str:
    import open_clip

    from pathvlm.clip.registry import NAMED_MODELS

    spec = NAMED_MODELS["pathclip-nano"]
    (folder / "pathclip-nano-bench.json").write_text(json.dumps(spec.model_cfg()))
    open_clip.add_model_config(folder)
    return "pathclip-nano-bench"


def run_open_clip_train(csv: Path, model: str, batch: int, steps: int, workers: int, logs: Path) -> list[float]:
    from open_clip_train.main import main

    args = ["--train-data", str(csv), "--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "title",
            "--csv-separator", ",", "--model", model, "--batch-size", str(batch), "--epochs", "1", "--workers",
            str(workers), "--lr", "1e-4", "--wd", "0.05", "--warmup", "2", "--lock-text", "--lock-text-freeze-layer-norm",
            "--device", "cpu", "--precision", "fp32", "--log-every-n-steps", "1", "--logs", str(logs), "--name", "run",
            "--save-frequency", "0", "--report-to", "", "--seed", "0", "--image-mean", "0.5", "0.5", "0.5",
            "--image-std", "0.5", "0.5", "0.5"]
    main(args)
    text = (logs / "run" / "out.log").read_text()
    times = [float(m) for m in re.findall(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s", text)]
    return times[:steps]


def run_pathvlm(data: str, batch: int, steps: int, workers: int, out: Path) -> list[float]:
    from train.clip.config import ClipTrainConfig
    from train.clip.trainer import train_clip

    cfg = ClipTrainConfig(model="pathclip-nano-untrained", data=data, output_dir=str(out), epochs=1, batch_size=batch,
                          max_steps=steps, num_workers=workers, eval_unseen_sources=["histolytics_hgsc"],
                          exclude_sources=[], eval_split="val", lock_text=True)
    result = train_clip(cfg)
    return [batch / s for s in result["step_seconds"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/data/nano")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    print("| torch threads | open_clip_train samples/s | pathvlm train clip samples/s | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = export_csv(args.data, args.batch_size * args.steps, tmp)
        model = register_config(tmp)
        for threads in args.threads:
            torch.set_num_threads(threads)
            theirs = run_open_clip_train(csv, model, args.batch_size, args.steps, 0, tmp / f"logs{threads}")
            ours = run_pathvlm(args.data, args.batch_size, args.steps, 0, tmp / f"ours{threads}")
            torch.set_num_threads(threads)
            a, b = statistics.median(theirs[2:]), statistics.median(ours[2:])
            print(f"| {threads} | {a:.1f} | {b:.1f} | {b / a:.2f}x |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
