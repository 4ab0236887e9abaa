"""Other image-text-to-text checkpoints load by path: LLaVA-style and Qwen2.5-VL (the Patho-R1 base) folders
chat and fine-tune (LoRA + projector) with the same commands as ours."""
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llava_dir(tmp_path_factory):
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from conftest import tiny_chat_tokenizer

    tok = tiny_chat_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=16, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="full", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=16, vision_feature_select_strategy="full",
                          num_additional_image_tokens=1)
    out = tmp_path_factory.mktemp("llava") / "tiny-llava"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_qwen25vl_dir(tmp_path_factory):
    """A 2-layer Qwen2.5-VL (window-attention vision tower, patch merger, M-RoPE LM) with a real BPE tokenizer."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template  # byte-identical to Qwen2.5-VL's own

    from conftest import tiny_chat_tokenizer

    tok = tiny_chat_tokenizer()
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    ids = dict(zip(special, tok.convert_tokens_to_ids(special)))
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                               tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=qwen2_5_vl_chat_template)
    out = tmp_path_factory.mktemp("qwen") / "tiny-qwen2.5-vl"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


SOURCES = {"llava": ("tiny_llava_dir", "LlavaForConditionalGeneration", "multi_modal_projector", "vision_tower"),
           "qwen2.5-vl": ("tiny_qwen25vl_dir", "Qwen2_5_VLForConditionalGeneration", "visual.merger", "visual.blocks")}


@pytest.fixture(params=list(SOURCES))
def source(request):
    fixture, cls, projector, tower = SOURCES[request.param]
    return request.getfixturevalue(fixture), cls, projector, tower


def test_folder_chats(source):
    from conftest import he_like_tile

    from pathvlm.chat import load_reasoner

    folder, cls, _, _ = source
    r = load_reasoner(str(folder))
    assert type(r.model).__name__ == cls
    res = r.chat([he_like_tile(1)], [{"role": "user", "content": "Is this benign?"}], max_new_tokens=5)
    assert res.prompt_tokens > 4 and res.completion_tokens >= 1
    assert "".join(r.chat([he_like_tile(1)], [{"role": "user", "content": "Is this benign?"}], max_new_tokens=5,
                          stream=True)).strip() == res.text


def test_folder_sft_step_trains_lora_and_projector(source, built_fixture_data, tmp_path):
    """One SFT step: LoRA on the LM and the projector change, the vision tower does not, and the exported
    bundle applied to the original checkpoint gives the merged model."""
    from pathvlm.vlm.adapters import apply_bundle
    from pathvlm.vlm.build import load_vlm

    from train.vlm.config import VLMTrainConfig
    from train.vlm.trainer import run_stage

    folder, _, projector, tower = source
    cfg = VLMTrainConfig(stage="sft", model=str(folder), data=str(built_fixture_data),
                         output_dir=str(tmp_path / "sft"), batch_size=2, max_steps=1, lr=5e-2, lora_rank=4,
                         lora_alpha=8, eval_samples=0, report_to="none", save_steps=1, max_length=256,
                         warmup_ratio=0.0)
    res = run_stage(cfg)
    # compare loaded models: Qwen2.5-VL checkpoints keep a legacy key layout on disk
    before = load_vlm(str(folder))[0].state_dict()
    after = load_vlm(res["final"])[0].state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert any(k.startswith("model.language_model.") for k in changed)
    assert any(k.startswith(f"model.{projector}.") for k in changed)
    assert not any(k.startswith(f"model.{tower}") for k in changed)
    base, _ = load_vlm(str(folder))
    apply_bundle(base, res["adapter"])
    for k, v in base.state_dict().items():
        assert torch.allclose(v, after[k], atol=2e-3), k  # fp16 bundle vs fp32 merge
