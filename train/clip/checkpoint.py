"""Checkpoints that are either complete or ignored.

``checkpoints/step-000123/`` holds ``model/`` (the factory's folder format: ``create_clip`` loads
it), ``optimizer.safetensors`` + ``trainer_state.json`` (optimizer tensors and scalars, schedule
position, data position, RNG state) and, last, ``COMPLETE``. It is written as ``.tmp-step-...``
and renamed; resume picks the newest folder with ``COMPLETE`` and never a temporary one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for idx, st in state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(idx), {})[k] = v
    return tensors, scalars


def _unflatten_optimizer(tensors: dict, scalars: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    for idx, st in scalars["state"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_checkpoint(root: Path, step: int, export_model, optimizer, trainer_state: dict, keep: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    export_model(tmp / "model")
    tensors, scalars = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "optimizer": scalars}, indent=1))
    (tmp / MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step-*") if (p / MARKER).exists())


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def load_checkpoint(path: Path, optimizer) -> dict:
    state = json.loads((path / "trainer_state.json").read_text())
    optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state.pop("optimizer")))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_rng"])
    return state
