"""PathVLM as a transformers model: exact vision tower copy, save/load/generate round trip."""
import pytest
import torch

import pathvlm.vlm  # noqa: F401  (registers the Auto classes)
from pathvlm.vlm import PathVLMForConditionalGeneration
from pathvlm.vlm.modeling import patch_features


@pytest.fixture(scope="module")
def tiny_vlm(tiny_clip):
    from transformers import LlamaConfig, LlamaForCausalLM

    clip, _, _ = tiny_clip
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))
    return PathVLMForConditionalGeneration.from_components(clip, lm, image_token_index=99).eval(), clip


def prompt(model, n_text=5):
    ids = [1] + [model.config.image_token_index] * model.config.image_seq_length + list(range(10, 10 + n_text))
    return torch.tensor([ids])


def test_vision_tower_is_an_exact_copy(tiny_vlm):
    model, clip = tiny_vlm
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = clip.visual.trunk.forward_features(x).flatten(2).transpose(1, 2)
        ours = patch_features(model.vision_tower, x)
        assert (ours - ref).abs().max() <= 1e-5
        assert torch.allclose(model.vision_tower(x), clip.visual(x), atol=1e-5)


def test_answers_depend_on_the_image(tiny_vlm):
    model, _ = tiny_vlm
    ids = prompt(model)
    with torch.no_grad():
        a = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 32, 32)).logits
        b = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32)).logits
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_loss_ignores_image_positions(tiny_vlm):
    model, _ = tiny_vlm
    ids = prompt(model)
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), labels=ids.clone())
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="<image> tokens"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))


def test_save_load_generate_identical(tiny_vlm, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, _ = tiny_vlm
    ids, pixels = prompt(model), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        first = model.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, do_sample=False)
    model.save_pretrained(tmp_path / "vlm")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm").eval()
    assert type(loaded) is PathVLMForConditionalGeneration
    with torch.no_grad():
        again = loaded.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, do_sample=False)
        no_cache = loaded.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(first, again) and torch.equal(again, no_cache)  # the KV cache path matches recomputation
    assert first.shape[1] == ids.shape[1] + 8
