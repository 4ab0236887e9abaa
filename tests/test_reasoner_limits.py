"""Per-model limits and system prompts: a Patho-R1-layout model (Qwen2.5-VL) takes a 1024x1024 tile and long
answers, gets its card's <think>/<answer> system prompt by default, and --system / the web app's field /
``role: system`` in the API replace it."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def patho_r1_dir(tmp_path_factory):
    """A 2-layer Qwen2.5-VL in a folder named like the Patho-R1 release, with Qwen2.5-VL's real limits: a 128,000-token
    context and the image processor's default max_pixels (12,845,056)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    from conftest import tiny_chat_tokenizer

    tok = tiny_chat_tokenizer()
    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok.add_special_tokens({"additional_special_tokens": special})
    ids = dict(zip(special, tok.convert_tokens_to_ids(special)))
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
                               tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=qwen2_5_vl_chat_template)
    out = tmp_path_factory.mktemp("patho") / "Patho-R1-7B"
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def test_limits_are_derived_from_the_model(patho_r1_dir, tiny_reasoner_dir):
    from pathvlm.chat import image_tokens_max, load_reasoner

    r = load_reasoner(str(patho_r1_dir))
    assert r.limits.max_new_tokens == 4096  # a quarter of 128,000, at most 4,096 (Patho-R1's README uses 2,048)
    assert r.limits.max_prompt_tokens == 128000 - 4096
    assert image_tokens_max(r.model, r.processor) == 12845056 // 28 ** 2 + 2  # 16,386 at max_pixels
    nano_like = load_reasoner(str(tiny_reasoner_dir))
    assert nano_like.limits.max_new_tokens == 128 and nano_like.limits.max_prompt_tokens == 384  # 512-token context


def test_a_1024_tile_is_answered_with_the_default_system_prompt(patho_r1_dir):
    from conftest import he_like_tile

    from pathvlm.chat import load_reasoner
    from pathvlm.vlm.model_cards import R1_THINK_ANSWER

    r = load_reasoner(str(patho_r1_dir))
    assert r.default_system == R1_THINK_ANSWER
    q = [{"role": "user", "content": "Is this benign? Answer yes or no."}]
    tile = he_like_tile(0, size=1024)
    res = r.chat([tile], q, max_new_tokens=2)
    assert res.prompt_tokens > 1369 > 1024  # (1036/28)^2 = 1,369 image tokens: refused under the old 1,024 cap
    inputs, n = r._prepare([tile], q)
    text = r.processor.tokenizer.decode(inputs["input_ids"][0])
    assert "<think> </think> and <answer> </answer>" in text and n == res.prompt_tokens
    own = r._prepare([tile], q, system="You are terse.")[0]
    assert "You are terse." in r.processor.tokenizer.decode(own["input_ids"][0])
    assert "<answer>" not in r.processor.tokenizer.decode(own["input_ids"][0])
    sent = [{"role": "system", "content": "Answer in French."}] + q  # a request's system message wins too
    assert "Answer in French." in r.processor.tokenizer.decode(r._prepare([tile], sent)[0]["input_ids"][0])
    none = r._prepare([tile], q, system="")[0]  # '' = no system prompt at all (Qwen's template then adds its own)
    assert "<answer>" not in r.processor.tokenizer.decode(none["input_ids"][0])


def test_chat_command_system_flag(patho_r1_dir, tmp_path, capsys):
    import json

    from conftest import he_like_tile

    from pathvlm.cli import main

    img = tmp_path / "tile.png"
    he_like_tile(1, size=64).save(img)
    args = ["chat", str(img), "Is this benign?", "--model", str(patho_r1_dir), "--json", "--max-new-tokens", "2"]
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)["prompt_tokens"]
    assert main(args + ["--system", "Short."]) == 0
    short = json.loads(capsys.readouterr().out)["prompt_tokens"]
    assert short < default  # the long default prompt was replaced
    assert main(args[:-1] + ["99999"]) == 2
    err = capsys.readouterr().err
    assert "max_new_tokens must be between 1 and 4096" in err and "Traceback" not in err


def test_api_role_system_and_web_app_field(tiny_clip_dir, tiny_reasoner_dir, tmp_path_factory):
    """``role: system`` in the OpenAI API reaches the model (the prompt grows by it); the web app has the field."""
    pytest.importorskip("gradio")
    pytest.importorskip("faiss")
    import httpx

    from conftest import he_like_tile
    from serve_helpers import data_url, make_gallery, png_bytes
    from pathvlm.serving.config import ServeConfig, limits_from_dict
    from pathvlm.serving.service import PathVLMService
    from serve.app import build_ui
    from serve.server import ServerThread, create_app

    gallery = make_gallery(tmp_path_factory.mktemp("gal") / "gallery")
    cfg = ServeConfig(clip=str(tiny_clip_dir), gallery=str(gallery), index=str(tmp_path_factory.mktemp("idx") / "i"),
                      reasoner=str(tiny_reasoner_dir), limits=limits_from_dict({"max_new_tokens": 4}))
    service = PathVLMService.load(cfg, say=lambda *_: None)
    image = {"type": "image_url", "image_url": {"url": data_url(png_bytes(he_like_tile(0)))}}
    user = {"role": "user", "content": [image, {"type": "text", "text": "Is this benign?"}]}
    srv = ServerThread(create_app(service)).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            plain = client.post("/v1/chat/completions", json={"model": "pathvlm", "messages": [user]})
            system = client.post("/v1/chat/completions", json={"model": "pathvlm", "messages": [
                {"role": "system", "content": "You are a pathologist. Answer yes or no."}, user]})
    finally:
        srv.stop()
    assert plain.status_code == 200 and system.status_code == 200, (plain.text, system.text)
    grown = system.json()["usage"]["prompt_tokens"] - plain.json()["usage"]["prompt_tokens"]
    tok = service.generator.reasoner.processor.tokenizer
    assert grown == len(tok("<|im_start|>system\nYou are a pathologist. Answer yes or no.<|im_end|>\n",
                            add_special_tokens=False)["input_ids"])
    demo = build_ui(service)
    assert any(c.get("props", {}).get("elem_id") == "chat-system" for c in demo.config["components"])
