"""pathvlm.chat: streaming equals the one-shot answer, request validation, reports, limits."""
import io

import pytest
from PIL import Image

import pathvlm
from pathvlm.chat import ChatLimits, ChatRequestError, load_reasoner, normalise_messages, split_reasoning

Q = [{"role": "user", "content": "Is this benign colonic tissue? Answer yes or no."}]


@pytest.fixture(scope="module")
def he_tile():
    from conftest import he_like_tile

    return he_like_tile(0, size=48)


@pytest.fixture(scope="module")
def reasoner(tiny_reasoner_dir):
    return load_reasoner(str(tiny_reasoner_dir))


def test_stream_matches_one_shot_and_module_call(reasoner, tiny_reasoner_dir, he_tile):
    one = reasoner.chat([he_tile], Q, max_new_tokens=12)
    pieces = list(reasoner.chat([he_tile], Q, max_new_tokens=12, stream=True))
    assert "".join(pieces).strip() == one.text
    assert one.completion_tokens >= 1 and one.prompt_tokens > reasoner.processor.image_seq_length
    assert one.finish_reason in ("stop", "length")
    again = pathvlm.chat(he_tile, "Is this benign colonic tissue? Answer yes or no.",
                         model=str(tiny_reasoner_dir), max_new_tokens=12)
    assert again.text == one.text  # greedy: deterministic; the module itself is callable


def test_chat_equals_plain_generate(reasoner, he_tile):
    res = reasoner.chat([he_tile], Q, max_new_tokens=10)
    inputs, _ = reasoner._prepare([he_tile], Q)
    out = reasoner.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    plain = reasoner.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert res.text == plain.strip() and res.text


def test_sampling_is_seeded(reasoner, he_tile):
    a = reasoner.chat([he_tile], Q, max_new_tokens=8, temperature=1.0, seed=3).text
    b = reasoner.chat([he_tile], Q, max_new_tokens=8, temperature=1.0, seed=3).text
    assert a == b


@pytest.mark.parametrize("images,messages,match", [
    ([], Q, "no image"),
    (None, Q, "no image"),
    ([b"this is not an image"], Q, "image 1"),
    ([12345], Q, "has type int"),
    (["https://example.org/x.png"], Q, "remote URL"),
    ([Image.new("RGB", (8, 8))], [], "no messages"),
    ([Image.new("RGB", (8, 8))], [{"role": "user", "content": "   "}], "empty message"),
    ([Image.new("RGB", (8, 8))], [{"role": "robot", "content": "hi"}], "role 'robot'"),
    ([Image.new("RGB", (8, 8))], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message"),
    ([Image.new("RGB", (8, 8))], [{"role": "user", "content": [{"type": "audio"}]}], "type 'audio'"),
    ([Image.new("RGB", (8, 8))] * 2, [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], "place 1 image"),
])
def test_malformed_requests_get_clear_errors(reasoner, images, messages, match):
    with pytest.raises(ChatRequestError, match=match):
        reasoner.chat(images, messages)


def test_prompt_over_limit_and_generation_limits(tiny_reasoner_dir, he_tile):
    small = load_reasoner(str(tiny_reasoner_dir), limits=ChatLimits(max_prompt_tokens=40, max_new_tokens=16))
    with pytest.raises(ChatRequestError, match="limit (is|of) 40"):
        small.chat([he_tile], [{"role": "user", "content": "describe " * 60}])
    with pytest.raises(ChatRequestError, match="the prompt has .* tokens; the limit is 40"):
        small.chat([he_tile], [{"role": "user", "content": "describe " * 12}])
    with pytest.raises(ChatRequestError, match="max_new_tokens"):
        small.chat([he_tile], Q, max_new_tokens=17)
    with pytest.raises(ChatRequestError, match="temperature"):
        small.chat([he_tile], Q, max_new_tokens=4, temperature=-1)


def test_truncated_png_and_bomb_are_refused(reasoner, he_tile):
    buf = io.BytesIO()
    he_tile.save(buf, "PNG")
    with pytest.raises(ChatRequestError, match="image 1"):
        reasoner.chat([buf.getvalue()[: len(buf.getvalue()) // 2]], Q)
    tight = load_reasoner(reasoner.name, limits=ChatLimits(max_image_pixels=100))
    with pytest.raises(ChatRequestError, match="image 1"):
        tight.chat([he_tile], Q)


def test_report_is_structured(reasoner, he_tile):
    rep = reasoner.report(he_tile, max_new_tokens=8)
    for section in ("## Specimen", "## Microscopic findings", "## Impression", "## Notes"):
        assert section in rep.text
    assert f"{he_tile.width} x {he_tile.height} px" in rep.text


def test_messages_and_reasoning_parsing():
    msgs = normalise_messages([{"role": "user", "content": "q"}], 1, ChatLimits())
    assert msgs[0]["content"][0] == {"type": "image"}
    assert split_reasoning("<think>glands</think><answer> B </answer>") == ("glands", "B")
    assert split_reasoning("<think>unfinished") == ("unfinished", "")
    assert split_reasoning("plain yes") == (None, "plain yes")


def test_batched_greedy_matches_single(reasoner):
    from conftest import he_like_tile

    tiles = [he_like_tile(i, size=40 + 8 * i) for i in range(3)]
    convs = [Q, [{"role": "user", "content": "Describe the histological features of this image."}], Q]
    batch = reasoner.chat_batch(tiles, convs, max_new_tokens=8, batch_size=2)
    single = [reasoner.chat([t], c, max_new_tokens=8) for t, c in zip(tiles, convs)]
    assert [b.text for b in batch] == [s.text for s in single]
    assert [b.prompt_tokens for b in batch] == [s.prompt_tokens for s in single]


def test_chat_command_streams_and_errors(tiny_reasoner_dir, he_tile, tmp_path, capsys):
    import json

    from pathvlm.cli import main

    img = tmp_path / "tile.png"
    he_tile.save(img)
    assert main(["chat", str(img), "Is this benign?", "--model", str(tiny_reasoner_dir), "--max-new-tokens", "6"]) == 0
    streamed = capsys.readouterr().out.strip()
    assert main(["chat", str(img), "Is this benign?", "--model", str(tiny_reasoner_dir), "--max-new-tokens", "6",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["text"] == streamed and res["completion_tokens"] >= 1
    assert main(["chat", str(img), "--report", "--model", str(tiny_reasoner_dir), "--max-new-tokens", "4",
                 "--out", str(tmp_path / "r.md")]) == 0
    assert "## Impression" in (tmp_path / "r.md").read_text()
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["chat", str(bad), "Is this benign?", "--model", str(tiny_reasoner_dir)]) == 2
    assert "image 1" in capsys.readouterr().err
    assert main(["chat", str(img), "--model", str(tiny_reasoner_dir)]) == 2
    assert "give a question" in capsys.readouterr().err


def test_closing_a_stream_stops_generation(reasoner, he_tile):
    calls = []
    hook = reasoner.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        it = reasoner.chat([he_tile], Q, max_new_tokens=reasoner.limits.max_new_tokens, stream=True)
        next(it)
        it.close()  # the client went away after the first piece
    finally:
        hook.remove()
    assert reasoner.last_stream_stop.is_set()
    assert 0 < len(calls) < 50  # generation stopped early instead of running to max_new_tokens
    assert reasoner._lock.acquire(timeout=5)  # and the model is free again
    reasoner._lock.release()


def test_lean_decoder_equals_generate_greedy_and_samples_reproducibly(reasoner, he_tile):
    from pathvlm.vlm.decode import decode_tokens

    inputs, _ = reasoner._prepare([he_tile], Q)
    ref = reasoner.model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    lean = list(decode_tokens(reasoner.model, inputs, 12, eos_token_ids=[-1]))
    assert lean == ref[0, inputs["input_ids"].shape[1]:].tolist()
    a = list(decode_tokens(reasoner.model, inputs, 12, [-1], temperature=1.0, top_p=0.9, seed=5))
    b = list(decode_tokens(reasoner.model, inputs, 12, [-1], temperature=1.0, top_p=0.9, seed=5))
    c = list(decode_tokens(reasoner.model, inputs, 12, [-1], temperature=1.0, top_p=0.9, seed=6))
    assert a == b and a != c


def test_llama_stepper_matches_the_model_forward(reasoner, he_tile):
    """The lean Llama steps give the logits of the model's own forward through its KV cache, step by step,
    and the decoder with and without them picks the same tokens."""
    import torch

    from pathvlm.vlm import llama_step
    from pathvlm.vlm.decode import decode_tokens

    model = reasoner.model
    assert llama_step.supports(model)
    inputs, _ = reasoner._prepare([he_tile], Q)
    with torch.inference_mode():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        stepper = llama_step.LlamaStepper(model, out.cache, 8)
        cache, token = out.cache, int(out.logits[0, -1].argmax())
        for _ in range(8):
            lean = stepper.step(token)
            ref = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True, logits_to_keep=1)
            cache = ref.cache
            assert torch.allclose(lean, ref.logits[:, -1], atol=1e-5, rtol=1e-4)
            token = int(ref.logits[0, -1].argmax())
    assert (list(decode_tokens(model, inputs, 16, [-1])) ==
            list(decode_tokens(model, inputs, 16, [-1], lean_steps=False)))


def test_llama_stepper_declines_other_arithmetic():
    """Other language models, scaled RoPE or biased projections keep the model's own forward."""
    from types import SimpleNamespace

    from transformers import LlamaConfig, Qwen2Config

    from pathvlm.vlm import llama_step

    def vlm(cfg):
        lm = SimpleNamespace(config=cfg, rotary_emb=object(), layers=[])
        return SimpleNamespace(model=SimpleNamespace(language_model=lm), lm_head=object())

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    assert llama_step.supports(vlm(LlamaConfig(**small)))
    assert not llama_step.supports(vlm(Qwen2Config(**small)))
    assert not llama_step.supports(vlm(LlamaConfig(**small, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                              "rope_theta": 10000.0})))
    assert not llama_step.supports(vlm(LlamaConfig(**small, attention_bias=True)))
    assert not llama_step.supports(SimpleNamespace(model=SimpleNamespace()))


def test_bf16_precision_option(tiny_reasoner_dir, he_tile):
    import torch

    r = load_reasoner(str(tiny_reasoner_dir), precision="bf16")
    assert next(r.model.parameters()).dtype == torch.bfloat16
    assert r.chat([he_tile], Q, max_new_tokens=4).completion_tokens >= 1
    with pytest.raises(ChatRequestError, match="precision"):
        load_reasoner(str(tiny_reasoner_dir), precision="int4")
