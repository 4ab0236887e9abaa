"""Published pathology models pathvlm recognises but does not run, each with the reason.

Recognising them matters: without this, a MUSK folder would fail somewhere deep with a message
about a missing config key, which tells the user nothing about what to do.
"""
from __future__ import annotations

import json
from pathlib import Path

MUSK = ("MUSK (Xiang et al. 2025) is not supported: it is a BEiT-3 multiway transformer (torchscale), whose "
        "modelling code lives only in the musk package and its loader (musk.utils.load_model_and_may_interpolate). "
        "pathvlm has no native BEiT-3 and never runs remote code. Embed with MUSK through its own package, "
        "or use CONCH, KEEP, QuiltNet or PLIP for zero-shot and text search here.")


def _weight_keys(path: Path, limit: int = 50) -> list[str]:
    """The first tensor names of a folder's safetensors file (read from its header, no tensors loaded)."""
    for f in sorted(path.glob("*.safetensors")):
        try:
            from safetensors import safe_open

            with safe_open(str(f), "pt") as h:
                return list(h.keys())[:limit]
        except Exception:
            return []
    return []


def unsupported_reason(path: Path) -> str | None:
    """Why ``path`` holds a model pathvlm will not load, or None."""
    keys = _weight_keys(path)
    if "musk" in path.name.lower() or any(k.startswith(("beit3.", "model.beit3.")) for k in keys):
        return MUSK
    config = path / "config.json"
    if config.exists():
        try:
            cfg = json.loads(config.read_text())
        except (json.JSONDecodeError, OSError):
            return None
        if isinstance(cfg, dict) and cfg.get("auto_map") and cfg.get("model_type") not in ("keep", "clip"):
            return (f"a model with its own code (config.json auto_map: {sorted(cfg['auto_map'])}); pathvlm never "
                    "runs remote code, and has no native loader for model_type "
                    f"'{cfg.get('model_type')}'")
    return None
