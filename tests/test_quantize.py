"""--quantize int8: the quantised layers compute what their int8 weights stand for, the lean decoder and
generate agree through them, and bad requests get clear errors. (Speed and accuracy on the real model are
measured in benchmarks/, not here.)"""
import pytest
import torch

from pathvlm.chat import ChatRequestError, load_reasoner
from pathvlm.errors import PathVLMError
from pathvlm.vlm import quantize as Q

QUESTION = [{"role": "user", "content": "Is this benign colonic tissue? Answer yes or no."}]


def test_int8_weight_round_trip_and_kernel_paths():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    q = Q.QuantizedLinear(lin)
    w = q.dequantized()
    # symmetric per-row int8: at most half a step from the float weight
    step = lin.weight.abs().amax(1, keepdim=True) / 127
    assert ((w - lin.weight).abs() <= step / 2 + 1e-7).all()
    for rows in (1, 5, Q.ROW_BY_ROW_MAX + 7):  # one token, row by row, dequantised block
        x = torch.randn(rows, 96)
        ref = torch.nn.functional.linear(x, w, lin.bias)
        y = q(x)
        assert y.shape == (rows, 40)
        # the kernel quantises activations to 8 bits per row: within a few activation steps of the float product
        tol = 0.05 * ref.abs().max() + 1e-4
        assert (y - ref).abs().max() <= tol
    x = torch.randn(3, 96)
    assert torch.allclose(torch.cat([q(x[i:i + 1]) for i in range(3)]), q(x))  # each row on its own scale
    assert q(torch.randn(2, 4, 96)).shape == (2, 4, 40)
    assert q.nbytes() == 96 * 40 + 4 * 40


def test_quantized_reasoner_decodes_like_its_generate(tiny_reasoner_dir):
    from conftest import he_like_tile

    from pathvlm.vlm.decode import decode_tokens

    tile = he_like_tile(0, size=48)
    fp = load_reasoner(str(tiny_reasoner_dir))
    r = load_reasoner(str(tiny_reasoner_dir), quantize="int8")
    assert r is not fp and r.model is not fp.model
    assert getattr(r.model, "pathvlm_quantize", None) == "int8"
    lm = r.model.model.language_model
    assert all(isinstance(layer.mlp.down_proj, Q.QuantizedLinear) for layer in lm.layers)
    assert isinstance(r.model.lm_head, Q.QuantizedLinear)
    assert isinstance(lm.embed_tokens, torch.nn.Embedding)  # embeddings stay float
    assert Q.weight_bytes(r.model) < Q.weight_bytes(fp.model) / 3
    inputs, _ = r._prepare([tile], QUESTION)
    # lean steps (llama_step through the int8 layers) and the model's own forward pick the same tokens
    assert list(decode_tokens(r.model, inputs, 12, [-1])) == list(decode_tokens(r.model, inputs, 12, [-1], lean_steps=False))
    res = r.chat([tile], QUESTION, max_new_tokens=12)
    assert res.completion_tokens >= 1
    # a small model's logits move little: the first greedy token of fp32 and int8 agree here
    with torch.inference_mode():
        a = fp.model(**fp._prepare([tile], QUESTION)[0], logits_to_keep=1).logits[0, -1]
        b = r.model(**inputs, logits_to_keep=1).logits[0, -1]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99


def test_quantize_errors(tiny_reasoner_dir):
    with pytest.raises(ChatRequestError, match="quantize must be one of none, int8"):
        load_reasoner(str(tiny_reasoner_dir), quantize="int3")
    with pytest.raises(ChatRequestError, match="precision fp32"):
        load_reasoner(str(tiny_reasoner_dir), quantize="int8", precision="bf16")
    r = load_reasoner(str(tiny_reasoner_dir), quantize="int8")
    with pytest.raises(PathVLMError, match="already quantised"):
        Q.quantize_language_model(r.model, "int8")
    assert Q.quantize_language_model(r.model, "none") == 0
    with pytest.raises(PathVLMError, match="no language model"):
        Q.quantize_language_model(torch.nn.Sequential(torch.nn.Linear(4, 4)).float(), "int8")


def test_serve_config_takes_quantize():
    from pathvlm.serving.config import load_serve_config

    assert load_serve_config(None, quantize="int8").quantize == "int8"
    assert load_serve_config(None, quantize="Q8_0").quantize == "q8_0"
    assert load_serve_config(None).quantize == "none"
    with pytest.raises(PathVLMError, match="quantize must be one of"):
        load_serve_config(None, quantize="fp8")


def test_the_int8_simulator_of_diagnose_quantized_computes_what_the_kernel_computes():
    """benchmarks/diagnose_quantized.py compares int8 schemes by simulating them in float32; its simulation of the
    scheme --quantize int8 runs (per-row int8 weights, per-token 7-bit activations) must equal the real kernel."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_quantized.py"
    spec = importlib.util.spec_from_file_location("diagnose_quantized", path)
    dq = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dq)
    torch.manual_seed(0)
    for width in (96, 576, 1536):
        lin = torch.nn.Linear(width, 64, bias=False)
        x = torch.randn(1, width) * torch.rand(1, width) * 3
        real = Q.QuantizedLinear(lin)(x)
        simulated = torch.nn.functional.linear(dq.fake_activations(x, 7 if Q.REDUCE_RANGE else 8), dq.fake_weight(lin.weight))
        error = (real - lin(x)).abs().max()
        assert error > 1e-3  # quantisation does change the product ...
        assert (real - simulated).abs().max() < 1e-3 * error  # ... and the simulation changes it the same way
