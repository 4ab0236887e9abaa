"""Why a PathCLIP run's training-time evaluation and its model card can differ: one trained run evaluated with
the card's code in the two memory layouts and the two precisions, beside the training-time figures.

    python -m train.clip.eval_paths runs/reproduce/clip/pathclip-nano-v1 --data runs/data/nano

- ``fp32``: the run's ``final/`` folder as ``create_clip`` loads it (contiguous tensors);
- ``fp32 channels_last``: the same with the image tower in channels-last memory, as the trainer holds it
  (and evaluates it after each epoch);
- ``fp16 bundle``: the trained tensors rounded to fp16 and loaded back in fp32, as ``create_clip("pathclip-nano")``
  loads the shipped bundle (``train.clip.bundle``);
- ``fp16 bundle channels_last``;
- ``training time``: the last epoch of ``history.json``;
- ``shipped <name>`` (``--shipped``, default ``pathclip-nano-v1``, the colon-only release the nano data trained): the shipped bundle re-measured on this data with
  this code, which tells a change of data or evaluation code since the card from a change of the training.

Prints a table and writes ``eval_paths.json`` in the run folder.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

KEYS = [("colon", "zeroshot/balanced_accuracy"), ("unseen names", "zeroshot[lc25000_colon_unseen_names]/balanced_accuracy"),
        ("t2i R@5", "retrieval/t2i_R@5"), ("t2i R@1", "retrieval/t2i_R@1"), ("t2i R@10", "retrieval/t2i_R@10"),
        ("i2t R@5", "retrieval/i2t_R@5"), ("HGSC", "unseen_zeroshot/balanced_accuracy")]


def fp16_rounded(model):
    """A copy whose trained tensors (everything but the locked text transformer) went through fp16 and back."""
    from pathvlm.clip.tower_weights import trained_subset

    out = copy.deepcopy(model)
    state = out.state_dict()
    rounded = {k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v
               for k, v in trained_subset(state).items()}
    out.load_state_dict(rounded, strict=False)
    return out.eval()


def channels_last(model):
    out = copy.deepcopy(model)
    out.visual.to(memory_format=torch.channels_last)
    return out.eval()


def main(argv=None) -> int:
    from pathvlm.clip.factory import create_clip
    from train.clip.data import read_rows
    from train.clip.evaluate import evaluate

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="output_dir of a pathvlm train clip run (with final/ and history.json)")
    ap.add_argument("--data", default="runs/data/nano")
    ap.add_argument("--shipped", default="pathclip-nano-v1", help="a bundled name to re-measure beside the run ('' for none)")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    cfg = json.loads((run / "final" / "pathvlm.json").read_text())["config"]
    heldout = read_rows(args.data, cfg["eval_split"], exclude_sources=cfg["exclude_sources"] + cfg["eval_unseen_sources"])
    unseen = [r for s in ("train", "val", "test") for r in read_rows(args.data, s, only_sources=cfg["eval_unseen_sources"])] \
        if cfg["eval_unseen_sources"] else []
    model, preprocess, tok = create_clip(str(run / "final"))
    variants = {"fp32": model, "fp32 channels_last": channels_last(model), "fp16 bundle": fp16_rounded(model)}
    variants["fp16 bundle channels_last"] = channels_last(variants["fp16 bundle"])
    if args.shipped:
        variants[f"shipped {args.shipped}"] = create_clip(args.shipped)[0]
    results = {}
    for name, m in variants.items():
        results[name] = evaluate(m, tok, preprocess, heldout, cfg["eval_task"], unseen, cfg["eval_unseen_task"],
                                 extra_tasks=cfg.get("eval_extra_tasks") or ())
        print(f"{name}: t2i R@5 {results[name]['retrieval/t2i_R@5']:.3f}", flush=True)
    history = json.loads((run / "history.json").read_text())["history"]
    if history:
        results["training time"] = history[-1]
    n = next(iter(results.values())).get("retrieval/n", 0)
    print("| evaluation | " + " | ".join(label for label, _ in KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join("–" if r.get(k) is None else f"{r[k]:.3f}" for _, k in KEYS) + " |")
    print(f"(retrieval over {n} held-out images: one caption's hit is {1 / max(n, 1):.4f})")
    (run / "eval_paths.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
