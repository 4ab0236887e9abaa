"""Prompt screening for GRPO (offline dynamic sampling).

GRPO learns only from groups whose completions earn different rewards. After SFT the policy is
confident: on a prompt it already answers correctly every sample earns the same reward, the group's
advantage is zero, and the step is spent for nothing (DAPO's "dynamic sampling" drops such groups
online). Here the starting policy answers a pool of training prompts once, greedily, and the GRPO
set is filled mostly with the prompts it missed, topped up with ones it got right so the policy
keeps its answers there. The choice is deterministic and saved (``screening.json``), so a resumed
run trains on the same prompts.
"""
from __future__ import annotations

import json
from pathlib import Path

from pathvlm.errors import PathVLMError


def screen_prompts(cfg, pool, out: Path, progress: bool = True) -> dict:
    """Greedy answers of the starting policy (``cfg.model`` + ``cfg.init_adapter``) to every prompt in
    ``pool`` (a grpo dataset); returns and saves ``{"correct": [0/1 per prompt], ...}``."""
    path = out / "screening.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("pool_size") == len(pool):
            return saved
    import torch

    from pathvlm.chat import Reasoner
    from pathvlm.vlm.adapters import apply_bundle
    from pathvlm.vlm.build import load_vlm
    from train.vlm.evaluate import answer_and_score

    model, processor = load_vlm(cfg.model)
    if cfg.init_adapter:
        apply_bundle(model, cfg.init_adapter)
    if torch.cuda.is_available():  # the trainer will train on the GPU: screen there too
        model.to("cuda")
    _, correct = answer_and_score(Reasoner(model, processor, name="screening"), pool, cfg.max_completion_length,
                                  cfg.eval_batch_size, progress=progress)
    saved = {"pool_size": len(pool), "correct": [int(c) for c in correct],
             "pool_accuracy": sum(correct) / max(1, len(pool))}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))
    return saved


def pick_screened(pool, correct: list[int], n: int, hard_fraction: float, seed: int):
    """``n`` prompts: up to ``hard_fraction`` of them from the missed ones, the rest from the answered ones
    (each part a seeded sample, in pool order)."""
    import random

    if not 0 <= hard_fraction <= 1:
        raise PathVLMError(f"screen_hard_fraction must be in [0, 1], got {hard_fraction}")
    missed = [i for i, c in enumerate(correct) if not c]
    passed = [i for i, c in enumerate(correct) if c]
    rng = random.Random(seed)
    take_missed = min(len(missed), round(hard_fraction * n))
    take_passed = min(len(passed), n - take_missed)
    chosen = sorted(rng.sample(missed, take_missed) + rng.sample(passed, take_passed))
    return pool.select(chosen), {"missed": take_missed, "answered": take_passed, "pool_missed": len(missed)}


def screen_and_pick(cfg, pool, out: Path):
    """Screen ``pool`` (saved or answered now) and pick ``cfg.max_train_samples`` prompts from it:
    ``(chosen, summary)``."""
    found = screen_prompts(cfg, pool, out)
    chosen, counts = pick_screened(pool, found["correct"], cfg.max_train_samples, cfg.screen_hard_fraction, cfg.seed)
    return chosen, {"pool_accuracy": found["pool_accuracy"], "pool_size": found["pool_size"], **counts}
