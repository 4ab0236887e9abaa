"""Other image-text-to-text checkpoints load by path: a LLaVA-style folder chats and trains like ours."""
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


def test_llava_folder_chats(tiny_llava_dir):
    from conftest import he_like_tile

    from pathvlm.chat import load_reasoner

    r = load_reasoner(str(tiny_llava_dir))
    assert type(r.model).__name__ == "LlavaForConditionalGeneration"
    res = r.chat([he_like_tile(1)], [{"role": "user", "content": "Is this benign?"}], max_new_tokens=5)
    assert res.prompt_tokens > 4 and res.completion_tokens >= 1
    assert "".join(r.chat([he_like_tile(1)], [{"role": "user", "content": "Is this benign?"}], max_new_tokens=5,
                          stream=True)).strip() == res.text


def test_llava_folder_sft_step_changes_lora_weights(tiny_llava_dir, built_fixture_data, tmp_path):
    from safetensors.torch import load_file

    from train.vlm.config import VLMTrainConfig
    from train.vlm.trainer import run_stage

    cfg = VLMTrainConfig(stage="sft", model=str(tiny_llava_dir), data=str(built_fixture_data),
                         output_dir=str(tmp_path / "sft"), batch_size=2, max_steps=1, lr=5e-2, lora_rank=4,
                         lora_alpha=8, eval_samples=0, report_to="none", save_steps=1, max_length=256,
                         warmup_ratio=0.0)
    run_stage(cfg)
    before = load_file(str(tiny_llava_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "sft" / "final" / "model.safetensors"))
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    assert any("language_model" in k for k in changed) and any("multi_modal_projector" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)
