"""``quantize="q8_0"`` with the prompt read by torch: its keys and values are written into llama.cpp's KV cache
through llama.cpp's sequence-state layout. The layout and the key order are checked here without llama.cpp;
``test_gguf_export.py`` checks the whole path against llama.cpp where it is installed."""
import math
import struct

import numpy as np
import pytest
import torch

from pathvlm.vlm.llamacpp_lm import STATE_MAGIC, TorchPrefill, gguf_rotary_order, parse_state, state_bytes


def _kv(layers=3, cells=5, width=8, seed=0):
    rng = np.random.default_rng(seed)
    keys = [rng.standard_normal((cells, width)).astype(np.float32) for _ in range(layers)]
    values = [rng.standard_normal((cells, width)).astype(np.float32) for _ in range(layers)]
    return keys, values


@pytest.mark.parametrize("v_trans", [True, False])
def test_state_bytes_parse_back(v_trans):
    keys, values = _kv()
    data = state_bytes(keys, values, v_trans)
    # magic, sequence 0, one stream, 5 cells; 12 bytes of metadata per cell; v_trans, layers; 3 x 2 blocks
    head = 16 + 5 * 12 + 8
    per_value = (12 if v_trans else 12) + 5 * 8 * 4
    assert len(data) == head + 3 * (12 + 5 * 8 * 4) + 3 * per_value
    assert struct.unpack_from("<IiII", data) == (STATE_MAGIC, 0, 1, 5)
    pos, k2, v2, vt = parse_state(data)
    assert vt is v_trans and pos.tolist() == [0, 1, 2, 3, 4]
    for a, b in zip(keys + values, k2 + v2):
        np.testing.assert_array_equal(a, b)
    if v_trans:  # llama.cpp keeps values transposed: each of the 8 value dimensions lists the 5 cells in turn
        first_block = head + 3 * (12 + 5 * 8 * 4) + 12
        row0 = np.frombuffer(data, np.float32, 5, first_block)
        np.testing.assert_array_equal(row0, values[0][:, 0])


def test_parse_state_refuses_other_layouts():
    keys, values = _kv()
    data = state_bytes(keys, values, True)
    with pytest.raises(ValueError, match="ends early"):
        parse_state(data[:-4])
    with pytest.raises(ValueError, match="left after"):
        parse_state(data + b"\0\0\0\0")
    with pytest.raises(ValueError, match="magic"):
        parse_state(struct.pack("<I", 0x1234) + data[4:])
    two_streams = bytearray(data)
    struct.pack_into("<I", two_streams, 8, 2)
    with pytest.raises(ValueError, match="2 streams"):
        parse_state(bytes(two_streams))
    f16 = bytearray(data)
    struct.pack_into("<i", f16, 16 + 5 * 12 + 8, 1)  # the first key block says GGML_TYPE_F16
    with pytest.raises(ValueError, match="ggml type 1"):
        parse_state(bytes(f16))


def _rope_adjacent_pairs(x, positions, base):
    """llama.cpp's rotary embedding for Llama (mode 0): each adjacent pair (2i, 2i+1) turns by pos * base^(-2i/d)."""
    t, h, d = x.shape
    out = x.clone()
    for i in range(d // 2):
        theta = positions.double() * base ** (-2 * i / d)
        c, s = torch.cos(theta).float()[:, None], torch.sin(theta).float()[:, None]
        a, b = x[:, :, 2 * i], x[:, :, 2 * i + 1]
        out[:, :, 2 * i], out[:, :, 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


def test_torch_prefill_keys_are_what_llama_cpp_computes_from_the_exported_weights(tiny_reasoner_dir):
    """The exported key projection (rows in GGUF order), turned by llama.cpp's rotary embedding, gives the keys
    the torch prefill hands over: so the cache llama.cpp reads back is the one it would have written."""
    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.gguf_export import permute_rotary

    model = load_vlm(str(tiny_reasoner_dir))[0]
    lm = model.model.language_model
    cfg = lm.config
    torch.manual_seed(0)
    emb = torch.randn(7, cfg.hidden_size)
    prefill = TorchPrefill(lm, lm.layers, model.lm_head)
    logits, keys, values = prefill(emb)
    with torch.inference_mode():
        ref = model.lm_head(lm(inputs_embeds=emb[None]).last_hidden_state[:, -1])
    torch.testing.assert_close(logits, ref)

    attn = lm.layers[0].self_attn
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    with torch.inference_mode():
        h = lm.layers[0].input_layernorm(emb)
        w = torch.from_numpy(permute_rotary(attn.k_proj.weight.numpy(), cfg.num_attention_heads,
                                            cfg.num_key_value_heads))
        k = (h @ w.T).view(7, cfg.num_key_value_heads, head_dim)
        base = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        want = _rope_adjacent_pairs(k, torch.arange(7), base).reshape(7, -1)
        v = attn.v_proj(h)
    np.testing.assert_allclose(keys[0], want.numpy(), atol=1e-5)
    np.testing.assert_allclose(values[0], v.numpy(), atol=1e-6)
    assert len(keys) == len(values) == cfg.num_hidden_layers and not math.isnan(float(keys[-1].sum()))


def test_gguf_rotary_order_interleaves_each_heads_halves():
    k = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # 2 heads, 3 positions, head_dim 4
    out = gguf_rotary_order(k)
    assert out.shape == (3, 8)
    assert out[0].tolist() == [0, 2, 1, 3, 12, 14, 13, 15]  # head 0: (x0, x2, x1, x3); head 1 likewise
