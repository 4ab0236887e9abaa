"""Original-format LLaVA checkpoints (Quilt-LLaVA v1.5, LLaVA-Med v1.5 Mistral, PathGen-LLaVA) load, chat and
fine-tune, equal to the reference LLaVA code.

The tiny checkpoints are written in the published layouts (``tests/reference/llava_layout.py``); the reference
token ids, pixels, logits and greedy tokens come from LLaVA's own code (llava-torch 1.2.2.post1 on transformers
4.36, ``tests/reference/make_llava_reference.py``, run in its own venv; committed).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REF = Path(__file__).parent / "reference"
sys.path.insert(0, str(REF))

import llava_layout as L  # noqa: E402

FAMILIES = ("llama", "mistral")


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    return json.loads((REF / "llava_reference.json").read_text()), load_file(str(REF / "llava_reference.safetensors"))


@pytest.fixture(scope="module")
def llava_env(tmp_path_factory):
    """A private pathvlm cache and an offline hub cache holding the tiny CLIP tower as openai/clip-vit-large-patch14-336."""
    import huggingface_hub.constants as hub_constants

    root = tmp_path_factory.mktemp("llava")
    hub = root / "hub"
    tower = L.write_clip_tower(root / "clip-src")
    L.make_hub_snapshot(hub, L.VISION_TOWER_REPO, tower)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHVLM_HOME", str(root / "pathvlm-home"))
        mp.setenv("HF_HUB_CACHE", str(hub))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub_constants, "HF_HUB_CACHE", str(hub))
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        yield {"root": root, "tower": tower,
               "llama": L.write_original_llava(root / "quilt-llava-v1.5-7b", "llama"),
               "mistral": L.write_original_llava(root / "llava-med-v1.5-mistral-7b", "mistral")}


def messages_of(case: dict) -> list[dict]:
    msgs = [{"role": "system", "content": case["system"]}] if case["system"] is not None else []
    msgs += [{"role": role, "content": text} for role, text in case["turns"]]
    return msgs + [{"role": "user", "content": case["question"]}]


def collapse_images(ids: list[int], image_token_id: int) -> list[int]:
    """Our ids with each run of image placeholders written as LLaVA's single IMAGE_TOKEN_INDEX (-200)."""
    out = []
    for t in ids:
        if t == image_token_id:
            if not out or out[-1] != -200:
                out.append(-200)
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_and_token_ids_equal_llava(llava_env, reference, family):
    """Every reference prompt: the same text (vicuna_v1 / mistral_instruct, system prompts, multi-turn, unicode,
    odd spacing) and the same token ids as LLaVA's ``tokenizer_image_token``."""
    from pathvlm.chat import load_reasoner
    from pathvlm.vlm.llava_templates import render

    ref, _ = reference
    fam = ref["families"][family]
    r = load_reasoner(str(llava_env[family]))
    assert type(r.processor).__name__ == "LlavaOriginalProcessor"
    image = L.reference_image()
    for name, case in {**fam["cases"], **fam["token_cases"]}.items():
        msgs = messages_of(case)
        from pathvlm.chat import normalise_messages

        placed = normalise_messages(msgs, 1, r.limits)
        assert render(fam["template"], placed) == case["prompt"], name
        assert r._template(placed) == case["prompt"], name  # the processor's Jinja template
        inputs, n = r._prepare([image], msgs)
        ids = inputs["input_ids"][0].tolist()
        assert collapse_images(ids, r.model.config.image_token_id) == case["input_ids"], name
        assert n == len(case["input_ids"]) - 1 + r.processor.image_seq_length
        assert r.count_prompt_tokens(msgs) == n  # the server's pre-check counts the same way


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_greedy_tokens_equal_llava(llava_env, reference, family):
    """Pad-to-square pixels identical; logits within 1e-4 of LLaVA's forward pass; the same greedy tokens."""
    from pathvlm.chat import load_reasoner

    ref, tensors = reference
    r = load_reasoner(str(llava_env[family]))
    image = L.reference_image()
    assert image.size == tuple(ref["image_size"]) and image.size[0] != image.size[1]
    pixels = r.processor.image_processor([image], return_tensors="pt")["pixel_values"]
    assert torch.equal(pixels, tensors[f"{family}.pixel_values"])
    worst = 0.0
    for name, case in ref["families"][family]["cases"].items():
        inputs, _ = r._prepare([image], messages_of(case))
        with torch.inference_mode():
            logits = r.model(**inputs).logits[0]
        assert logits.shape[0] == case["n_positions"]
        expected = tensors[f"{family}.{name}.logits"]
        got = logits[case["logit_rows"], : expected.shape[1]]
        worst = max(worst, float((got - expected).abs().max()))
        new = r.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        assert new.tolist() == case["greedy"], name
        res = r.chat([image], messages_of(case), max_new_tokens=12)
        assert res.completion_tokens == 12 and res.prompt_tokens == case["n_positions"]
    assert worst < 1e-4, worst


def test_cached_conversion_is_reused_and_keyed_by_files(llava_env):
    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.llava_original import cache_dir

    before = sorted(p.name for p in cache_dir().iterdir()) if cache_dir().exists() else []
    m1, _ = load_vlm(str(llava_env["llama"]))
    m2, _ = load_vlm(str(llava_env["llama"]))
    assert m1.pathvlm_source["converted"] == m2.pathvlm_source["converted"]
    assert len(sorted(p.name for p in cache_dir().iterdir())) == max(len(before), 1)
    info = json.loads((Path(m1.pathvlm_source["converted"]) / "pathvlm_llava.json").read_text())
    assert info["template"] == "vicuna_v1" and info["mm_vision_tower"] == L.VISION_TOWER_REPO


def test_convert_command_writes_a_plain_transformers_folder(llava_env, tmp_path, capsys):
    """``pathvlm convert llava SRC OUT --vision-tower DIR``: OUT loads with transformers alone (no missing or
    unexpected keys, llava-hf layout) and chats through pathvlm with --model OUT."""
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    from pathvlm.cli import main
    from pathvlm.chat import load_reasoner

    out = tmp_path / "quilt-llava-hf"
    assert main(["convert", "llava", str(llava_env["llama"]), str(out), "--vision-tower", str(llava_env["tower"])]) == 0
    assert "LlavaForConditionalGeneration" in capsys.readouterr().out
    model, info = AutoModelForImageTextToText.from_pretrained(str(out), output_loading_info=True)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "multi_modal_projector.linear_1.weight" in keys and "language_model.lm_head.weight" in keys
    assert any(k.startswith("vision_tower.vision_model.encoder.layers.") for k in keys)
    assert model.generation_config.suppress_tokens == [model.config.image_token_id]
    r = load_reasoner(str(out))
    res = r.chat([L.reference_image()], [{"role": "user", "content": "What is shown in this image?"}], max_new_tokens=4)
    assert res.completion_tokens == 4
    # an existing folder that is not a conversion is never overwritten
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    assert main(["convert", "llava", str(llava_env["llama"]), str(keep)]) == 2
    assert "not an earlier conversion" in capsys.readouterr().err and (keep / "notes.txt").read_text() == "mine"


def test_vision_tower_inside_the_checkpoint_and_missing_tower_message(llava_env, tmp_path, capsys):
    """PathGen-LLaVA ships its CLIP folder inside the repo and names it relatively; a tower that is nowhere gets a
    message that names it and the two ways to provide it."""
    import shutil

    from pathvlm.cli import main
    from pathvlm.errors import SourceError
    from pathvlm.vlm.llava_original import read_original, resolve_vision_tower

    pathgen = L.write_original_llava(tmp_path / "PathGen-LLaVA", "llama", weights_format="safetensors",
                                     vision_tower="./pathgenclip-vit-large-patch14", model_type="llava_llama")
    shutil.copytree(llava_env["tower"], pathgen / "pathgenclip-vit-large-patch14")
    assert resolve_vision_tower(read_original(pathgen)) == pathgen / "pathgenclip-vit-large-patch14"
    lost = L.write_original_llava(tmp_path / "lost", "llama", vision_tower="/nowhere/clip-vit-large-patch14-336")
    with pytest.raises(SourceError, match="--vision-tower DIR"):
        resolve_vision_tower(read_original(lost))
    img = tmp_path / "tile.png"
    L.reference_image().save(img)
    assert main(["chat", str(img), "What is this?", "--model", str(lost), "--no-stream"]) == 2
    err = capsys.readouterr().err
    assert "mm_vision_tower" in err and "--vision-tower" in err and "Traceback" not in err
    assert main(["chat", str(img), "What is this?", "--model", str(lost), "--vision-tower", str(llava_env["tower"]),
                 "--no-stream", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("change,match", [
    ({"mm_projector_type": "linear"}, "mlp2x_gelu"),
    ({"image_aspect_ratio": "anyres"}, "anyres"),
    ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature"),
    ({"model_type": "llava_mpt"}, "MPT"),
    ("lora", "merge_lora_weights.py"),
])
def test_unsupported_checkpoints_are_named(tmp_path, change, match):
    from pathvlm.errors import SourceError
    from pathvlm.vlm.llava_original import is_original_llava, read_original

    folder = L.write_original_llava(tmp_path / "odd", "llama", **(change if isinstance(change, dict) else {}))
    if change == "lora":
        (folder / "adapter_config.json").write_text("{}")
    assert is_original_llava(folder)
    with pytest.raises(SourceError, match=match):
        read_original(folder)


def test_incomplete_download_and_unpickling_refused(llava_env, tmp_path):
    import shutil

    from pathvlm.errors import SourceError
    from pathvlm.vlm.llava_original import convert

    broken = tmp_path / "broken"
    shutil.copytree(llava_env["llama"], broken)
    (broken / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(SourceError, match="incomplete download"):
        convert(broken, tmp_path / "out", vision_tower=llava_env["tower"])
    evil = tmp_path / "evil"
    shutil.copytree(llava_env["llama"], evil)

    class Boom:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model.norm.weight": Boom()}, evil / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(SourceError, match="not a readable PyTorch weights file"):
        convert(evil, tmp_path / "out2", vision_tower=llava_env["tower"])


@pytest.mark.parametrize("family", FAMILIES)
def test_real_7b_dimensions_have_full_key_coverage(family):
    """LLaVA's own 7B classes' state-dict keys (dumped by the reference script) plus CLIP ViT-L/14-336's vision keys,
    mapped, are exactly LlavaForConditionalGeneration's parameters at 7B, shapes included (meta device)."""
    from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

    from pathvlm.vlm.llava_original import LM_KEYS, map_key

    keys = json.loads((REF / "llava_keys_7b.json").read_text())[family]
    lm = L.REAL_LLAMA_7B if family == "llama" else L.REAL_MISTRAL_7B
    flat = L.llava_config(family, lm, L.REAL_CLIP_L14_336, L.VISION_TOWER_REPO)
    text = {k: flat[k] for k in LM_KEYS if k in flat and flat[k] is not None}
    c = L.REAL_CLIP_L14_336
    vision = AutoConfig.for_model("clip_vision_model", hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                                  num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                                  image_size=c["image_size"], patch_size=c["patch_size"])
    config = LlavaConfig(text_config=AutoConfig.for_model(family, **{**text, "vocab_size": lm["vocab_size"] + 1}),
                         vision_config=vision, image_token_index=lm["vocab_size"])
    with torch.device("meta"):
        target = {k: tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    mapped = {}
    for k, shape in keys.items():
        new = map_key(k)
        assert new is not None, k
        rows = shape[0] + 1 if new in ("model.language_model.embed_tokens.weight", "lm_head.weight") else shape[0]
        mapped[new] = (rows, *shape[1:])
    for k, shape in L.clip_model_shapes(c).items():
        if k.startswith("vision_model."):
            mapped["model.vision_tower." + k[len("vision_model."):]] = tuple(shape)
    assert set(mapped) == set(target), (sorted(set(target) - set(mapped))[:5], sorted(set(mapped) - set(target))[:5])
    assert all(mapped[k] == target[k] for k in target)
    assert len(keys) == 295  # 32 layers x 9 + embed, norm, lm_head + the projector's 4


def test_sft_step_from_converted_llava(llava_env, built_fixture_data, tmp_path):
    """One ``pathvlm train sft`` step (the command, on the nano SFT recipe made tiny) from a converted LLaVA: LoRA on the LM and the projector change, the vision
    tower does not; the loss is on the answer and its </s> (LLaVA's masking), with LLaVA's tokenisation."""
    from pathvlm.vlm.build import load_vlm
    from pathvlm.vlm.llava_original import convert

    from train.vlm.config import VLMTrainConfig
    from train.vlm.trainer import prepare_model

    out = convert(llava_env["llama"], tmp_path / "quilt-hf", vision_tower=llava_env["tower"], progress=False)
    cfg = VLMTrainConfig(stage="sft", model=str(out), data=str(built_fixture_data), output_dir=str(tmp_path / "sft"),
                         batch_size=2, max_steps=1, lr=5e-2, lora_rank=4, lora_alpha=8, eval_samples=0,
                         report_to="none", save_steps=1, max_length=1024, warmup_ratio=0.0)
    # the collator's batch: LLaVA's ids around <image>, labels only on the assistant's answer + </s>
    from train.vlm import data as vlm_data
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    model, processor = prepare_model(cfg)
    assert type(processor).__name__ == "LlavaOriginalProcessor"
    ds = vlm_data.sft_dataset(cfg, cfg.train_split, 2)
    batch = DataCollatorForVisionLanguageModeling(processor, max_length=1024, assistant_only_loss=True)([ds[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = processor.tokenizer.decode(ids[labels != -100])
    answer = ds[0]["messages"][-1]["content"]
    answer = answer if isinstance(answer, str) else "".join(p.get("text") or "" for p in answer)
    assert learned.replace(" ", "") == (answer + "</s>").replace(" ", "")
    assert int((ids == processor.image_token_id).sum()) == processor.image_seq_length
    from pathvlm.cli import main

    recipe = Path(__file__).resolve().parent.parent / "train" / "recipes" / "vlm" / "nano_sft.yaml"
    sets = {"model": str(out), "init_adapter": "null", "data": str(built_fixture_data), "output_dir": cfg.output_dir,
            "batch_size": 2, "max_steps": 1, "lr": 5e-2, "lora_rank": 4, "lora_alpha": 8, "eval_samples": 0,
            "report_to": "none", "save_steps": 1, "max_length": 1024, "warmup_ratio": 0.0, "max_train_samples": 0}
    assert main(["train", "sft", "--config", str(recipe)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]) == 0
    res = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert res["steps"] == 1
    before = load_vlm(str(out))[0].state_dict()
    after = load_vlm(res["final"])[0].state_dict()
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert any(k.startswith("model.language_model.layers.") for k in changed)
    assert any(k.startswith("model.multi_modal_projector.") for k in changed)
    assert not any(k.startswith("model.vision_tower.") for k in changed)
    assert (Path(res["final"]) / "pathvlm_llava.json").exists()  # the fine-tuned folder keeps LLaVA's tokenisation
    assert type(load_vlm(res["final"])[1]).__name__ == "LlavaOriginalProcessor"


@pytest.mark.parametrize("config,match", [
    ({"model_type": "mystery_vlm"}, "never runs a checkpoint's own code"),
    ({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2},
     "has no image input"),
    ({"architectures": ["CLIPModel"], "model_type": "clip"}, "not a reasoner"),
    ({}, "no model_type"),
])
def test_folders_that_are_not_reasoners_are_named(tmp_path, capsys, config, match):
    """No traceback and no hint that leads nowhere (no 'upgrade transformers'): the message says what the folder is."""
    from pathvlm.cli import main

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    img = tmp_path / "tile.png"
    L.reference_image().save(img)
    assert main(["chat", str(img), "What is this?", "--model", str(folder), "--no-stream"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and "out of date" not in err and "upgrade" not in err


def test_batched_answers_equal_single_ones(llava_env):
    """chat_batch (left padding, as evaluation uses it) gives the greedy answers chat gives one by one."""
    from pathvlm.chat import load_reasoner

    r = load_reasoner(str(llava_env["llama"]))
    image = L.reference_image()
    convs = [[{"role": "user", "content": "What is shown in this image?"}],
             [{"role": "user", "content": "Describe the histological features of this image in detail, please."}]]
    batch = r.chat_batch([image, image], convs, max_new_tokens=6)
    single = [r.chat([image], c, max_new_tokens=6) for c in convs]
    assert [b.text for b in batch] == [s.text for s in single]
    assert [b.prompt_tokens for b in batch] == [s.prompt_tokens for s in single]


def test_llava_options_on_other_reasoners_are_refused(tiny_reasoner_dir):
    from pathvlm.errors import SourceError
    from pathvlm.vlm.build import load_vlm

    with pytest.raises(SourceError, match="original-format LLaVA"):
        load_vlm(str(tiny_reasoner_dir), template="vicuna_v1")
    with pytest.raises(SourceError, match="original-format LLaVA"):
        load_vlm("pathvlm-nano", vision_tower="/tmp")
