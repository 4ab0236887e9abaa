"""``quantize="q8_0"``: the reasoner's language model as GGUF for llama.cpp.

The file is checked without llama.cpp by transformers' own GGUF loader (which undoes the rotary permutation
and the names): an f32 export must give the torch model's logits, a q8_0 export nearly so. Decoding through
llama.cpp itself runs where llama-cpp-python is installed (an optional C++ build; skipped elsewhere)."""
import numpy as np
import pytest
import torch

from pathvlm.errors import PathVLMError

QUESTION = [{"role": "user", "content": "Is this benign colonic tissue? Answer yes or no."}]


@pytest.fixture(scope="module")
def tiny(tiny_reasoner_dir):
    from pathvlm.vlm.build import load_vlm

    return load_vlm(str(tiny_reasoner_dir))


def _reload_logits(path, ids):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.inference_mode():
        return lm(input_ids=ids).logits


def test_gguf_file_holds_the_language_model(tiny, tmp_path):
    import gguf

    from pathvlm.vlm.gguf_export import export_gguf

    model, processor = tiny
    lm = model.model.language_model
    path = export_gguf(model, processor.tokenizer, tmp_path / "lm.f32.gguf", "f32")
    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert "output.weight" not in names  # tied head: llama.cpp reuses the embedding
    assert len(names) == 2 + 9 * lm.config.num_hidden_layers
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == lm.embed_tokens.weight.shape[0]  # one entry per embedding row, <image> included
    assert not list(tmp_path.glob(".lm*"))  # no temporary file left behind

    live = lm.embed_tokens.weight.abs().sum(1).nonzero().flatten()  # the fixture zeroes most rows
    ids = live[torch.randperm(len(live), generator=torch.Generator().manual_seed(0))[:8]].view(1, -1)
    with torch.inference_mode():
        ref = model.lm_head(lm(input_ids=ids).last_hidden_state)
    assert ref.abs().amax() > 0.1
    # f32: the same arithmetic; a wrong rotary permutation or tensor name would change the logits
    assert torch.allclose(_reload_logits(path, ids), ref, atol=1e-4)
    q8 = export_gguf(model, processor.tokenizer, tmp_path / "lm.q8_0.gguf", "q8_0")
    assert q8.stat().st_size < path.stat().st_size / 2
    cos = torch.nn.functional.cosine_similarity(_reload_logits(q8, ids).flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def test_untied_head_is_written(tiny, tmp_path):
    import copy

    import gguf

    from pathvlm.vlm.gguf_export import export_gguf

    model, processor = tiny
    untied = copy.deepcopy(model)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone() * 0.5)
    path = export_gguf(untied, processor.tokenizer, tmp_path / "untied.gguf", "f32")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}


def test_gguf_export_refusals(tiny, tmp_path):
    from pathvlm.vlm.gguf_export import export_gguf

    model, processor = tiny
    with pytest.raises(PathVLMError, match="GGUF type must be one of q8_0, f16, f32"):
        export_gguf(model, processor.tokenizer, tmp_path / "x.gguf", "q2_k")
    with pytest.raises(PathVLMError, match="needs a Llama language model"):
        export_gguf(torch.nn.Linear(2, 2), processor.tokenizer, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_q8_0_without_llama_cpp_says_how_to_install(tiny_reasoner_dir, monkeypatch):
    import sys

    from pathvlm.chat import load_reasoner

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    with pytest.raises(PathVLMError, match="pip install llama-cpp-python"):
        load_reasoner(str(tiny_reasoner_dir), quantize="q8_0", limits=None, device="cpu", template=None,
                      vision_tower=None, precision="fp32")


def test_llama_cpp_decodes_like_the_torch_model(tiny_reasoner_dir, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    from conftest import he_like_tile

    from pathvlm.chat import load_reasoner
    from pathvlm.vlm.decode import decode_tokens
    from pathvlm.vlm.llamacpp_lm import parse_state

    monkeypatch.setenv("PATHVLM_HOME", str(tmp_path))
    tile = he_like_tile(0, size=48)
    fp = load_reasoner(str(tiny_reasoner_dir))
    q = load_reasoner(str(tiny_reasoner_dir), quantize="q8_0")
    assert q.model.pathvlm_quantize == "q8_0" and list((tmp_path / "gguf").glob("*.q8_0.gguf"))
    inputs, _ = q._prepare([tile], QUESTION)
    with torch.inference_mode():
        ref = fp.model(**inputs, logits_to_keep=1).logits[0, -1]
        embeds = q.model.model.prompt_embeddings(inputs["input_ids"], inputs["pixel_values"])
    ext = q.model.pathvlm_llamacpp
    assert ext.torch_prefill is not None  # the default: torch reads the prompt, llama.cpp decodes
    got = ext.prefill(embeds[0])[0]
    torch.testing.assert_close(got, ref)  # the prompt's logits are the float32 model's own
    torch_state = parse_state(ext._get_state())
    after_torch = ext.step(int(got.argmax()))[0]
    # llama.cpp reading the same prompt itself: nearly the same cache, and nearly the same next step
    own = ext._prefill_llama(embeds[0])[0]
    assert torch.nn.functional.cosine_similarity(own, ref, dim=0) > 0.99
    llama_state = parse_state(ext._get_state())
    assert torch_state[0].tolist() == llama_state[0].tolist() == list(range(embeds.shape[1]))
    for a, b in zip(torch_state[1] + torch_state[2], llama_state[1] + llama_state[2]):
        assert np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    after_llama = ext.step(int(got.argmax()))[0]
    assert torch.nn.functional.cosine_similarity(after_torch, after_llama, dim=0) > 0.99
    # the chat path and batches go through llama.cpp, one request at a time
    tokens = list(decode_tokens(q.model, inputs, 8, [-1]))
    assert len(tokens) == 8
    res = q.chat_batch([tile, tile], [QUESTION, QUESTION], max_new_tokens=8)
    assert [r.completion_tokens for r in res] == [8, 8]
    assert res[0].text == q.chat([tile], QUESTION, max_new_tokens=8).text
    # the torch decoder layers were released: using them is an error, not a silent skip
    with pytest.raises(PathVLMError, match="decodes in llama.cpp"):
        q.model.generate(**inputs, max_new_tokens=2)

    # prefill="llama.cpp": the decoder layers are released and llama.cpp reads the prompt too
    from pathvlm.chat import Reasoner
    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.llamacpp_lm import attach_llama_cpp

    model, processor = load_vlm(str(tiny_reasoner_dir))  # its own copy: load_reasoner's are shared
    attach_llama_cpp(model, processor.tokenizer, prefill="llama.cpp")
    lean = Reasoner(model, processor, name="tiny")
    assert lean.model.pathvlm_llamacpp.torch_prefill is None
    assert len(lean.chat([tile], QUESTION, max_new_tokens=8).text) > 0
    with pytest.raises(PathVLMError, match="prefill is 'torch' or 'llama.cpp'"):
        attach_llama_cpp(fp.model, fp.processor.tokenizer, prefill="gpu")


def test_gguf_logits_benchmark_reads_an_export_back(tiny, tiny_reasoner_dir, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from pathvlm.vlm.gguf_export import export_gguf

    model, processor = tiny
    path = export_gguf(model, processor.tokenizer, tmp_path / "lm.f32.gguf", "f32")
    spec = importlib.util.spec_from_file_location(
        "gguf_logits", Path(__file__).resolve().parent.parent / "benchmarks" / "gguf_logits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(path), "--model", str(tiny_reasoner_dir), "--prompt", "benign colonic tissue"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| lm.f32.gguf")]
    assert len(row) == 1 and row[0].split("|")[2].strip().startswith(("1.0000 (yes)", "0.9999 (yes)"))
