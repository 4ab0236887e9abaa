"""Published CLIP-style pathology models in their own layouts: CONCH (against outputs of CONCH's own
code, committed), KEEP (against the modelling code's construction from timm + transformers),
BiomedCLIP / QuiltNet-B-16-PMB offline (against open_clip with the text tower reachable),
``ARCH:/path/file.pt`` (PathGen-CLIP, Patho-CLIP), MUSK's clear refusal, and one fine-tuning step
from a QuiltNet- and a CONCH-layout model."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA, TINY_VIT_CFG, he_like_tile, make_hub_cache
from pathvlm.clip.factory import create_clip
from pathvlm.errors import SourceError

REFERENCE = json.loads((DATA / "conch_reference.json").read_text())


# ----------------------------------------------------------------------------- CONCH
def test_conch_equals_the_reference_package(tiny_conch_dir):
    model, preprocess, tok = create_clip(str(tiny_conch_dir))
    ref = load_file(str(DATA / "conch_reference.safetensors"))
    with torch.no_grad():
        img = model.encode_image(ref["pixels"])
        txt = model.encode_text(ref["text"])
        logits = model.caption_logits(ref["pixels"], ref["text"])
    # measured: max |difference| 0 for all three on the CPU that wrote the reference (same torch; the reference
    # ran timm 0.9.8, transformers 4.38); 1.1e-6 on the caption logits on an AVX2-only CPU, whose kernels round
    # float32 sums differently. 1e-5 is far below any real mismatch (a wrong layer moves them by ~1e-1).
    for got, key in ((img, "image_embedding"), (txt, "text_embedding"), (logits, "caption_logits")):
        assert torch.allclose(got, ref[key], atol=1e-5, rtol=0), (key, (got - ref[key]).abs().max())
    assert preprocess.transforms[-1].mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert model.pathvlm_name == "CONCH"


def test_conch_real_size_keys_are_covered_on_meta():
    """CONCH's 641 published tensors (conch_ViT-B-16 as its package builds it) are exactly pathvlm's."""
    from pathvlm.clip.conch import ConchModel, config_from_weights

    shapes = REFERENCE["real_state_dict"]
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    cfg = config_from_weights(state)
    assert (cfg["image_size"], cfg["vision_heads"], cfg["text_heads"], cfg["context_length"]) == (448, 12, 12, 128)
    with torch.device("meta"):
        ours = ConchModel(cfg).state_dict()
    assert set(ours) == set(shapes)
    assert all(list(ours[k].shape) == shapes[k] for k in shapes)


def test_conch_tokenizer_equals_conch_tokenize(tiny_conch_dir):
    """CONCH's tokenize(): batch_encode_plus(max_length=127, padding='max_length', truncation) + one pad,
    here through transformers 5's __call__ on the same tokenizer file."""
    from transformers import PreTrainedTokenizerFast

    from pathvlm.clip.conch import ConchTokenizer

    texts = ["an H&E image of adenocarcinoma", "benign " * 200, ""]
    ours = ConchTokenizer(tiny_conch_dir / "tokenizer.json")(texts)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tiny_conch_dir / "tokenizer.json"), bos_token="<start_of_text>",
                                 eos_token="<end_of_text>", pad_token="<pad>")
    ids = hf(texts, max_length=127, add_special_tokens=True, truncation=True, padding="max_length",
             return_tensors="pt")["input_ids"]
    ref = torch.nn.functional.pad(ids, (0, 1), value=hf.pad_token_id)
    assert torch.equal(ours, ref) and ours.shape == (3, 128)
    assert ours[1, 126].item() == 2 and ours[0, :2].tolist() == [1, 4] and ours[2, :3].tolist() == [1, 2, 0]


def test_conch_real_tokenizer_ids_when_the_package_is_installed():
    from pathvlm.clip.conch import ConchTokenizer, find_tokenizer

    try:
        path = find_tokenizer(Path("/nonexistent"))
    except SourceError:
        pytest.skip("CONCH's tokenizer (conch / conch-fork package) is not installed here")
    import hashlib

    rec = REFERENCE["tokenizer"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
    assert ConchTokenizer(path)(rec["sentences"]).tolist() == rec["ids"]


def test_conch_errors(tiny_conch_dir, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "conch" else real_find_spec(n, *a))
    (tiny_conch_dir / "tokenizer.json").unlink()
    with pytest.raises(SourceError, match="CONCH's tokenizer is not there.*conch-fork"):
        create_clip(str(tiny_conch_dir))
    from conftest import write_conch_tokenizer

    write_conch_tokenizer(tiny_conch_dir / "tokenizer.json")
    state = torch.load(tiny_conch_dir / "pytorch_model.bin", weights_only=True)
    del state["visual.proj_contrast"]
    torch.save(state, tiny_conch_dir / "pytorch_model.bin")
    with pytest.raises(SourceError, match="no tensor 'visual.proj_contrast'"):
        create_clip(str(tiny_conch_dir))


def test_conch_zero_shot_from_the_command_line(tiny_conch_dir, tmp_path, capsys):
    from pathvlm.cli import main

    he_like_tile(0, size=40).save(tmp_path / "t.png")
    assert main(["classify", str(tmp_path / "t.png"), "--classes", "tumour,stroma", "--model", str(tiny_conch_dir),
                 "--json"]) == 0
    probs = json.loads(capsys.readouterr().out)["results"][0]["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- KEEP
def _tiny_keep(root: Path, minilm_dir) -> tuple[Path, torch.nn.Module]:
    """KEEP's hub layout with a tiny ViT and BERT; returns the folder and the reference model, built
    as KEEP's modeling_keep.py builds it (timm ViT-L/16 kwargs, Linear-GELU-Linear, BertModel)."""
    import timm
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    text_config = dict(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, max_position_embeddings=300)
    torch.manual_seed(0)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = timm.create_model("vit_large_patch16_224", pretrained=False, img_size=32, patch_size=16,
                                            init_values=1e-5, num_classes=0, dynamic_img_size=True, embed_dim=64,
                                            depth=2, num_heads=1)
            self.visual_head = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.GELU(), torch.nn.Linear(16, 16))
            self.text = BertModel(BertConfig(**text_config))
            self.logit_scale = torch.nn.Parameter(torch.tensor(3.2))

    ref = Reference().eval()
    folder = root / "KEEP"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["KEEPModel"], "model_type": "keep", "projection_dim": 16,
        "auto_map": {"AutoConfig": "modeling_keep.KEEPConfig", "AutoModel": "modeling_keep.KEEPModel"},
        "vision_config": {}, "text_config": text_config}))
    tok.save_pretrained(folder)
    return folder, ref


def test_keep_equals_its_modelling_code(tmp_path, minilm_dir):
    from torchvision import transforms as T
    from transformers import AutoTokenizer

    folder, ref = _tiny_keep(tmp_path, minilm_dir)
    model, preprocess, tok = create_clip(str(folder))
    img = he_like_tile(1, size=48)
    # KEEP's load_model(): Resize(224, bicubic), CenterCrop(224), ImageNet mean/std (at the tiny size)
    ref_tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = ref_tf(img)[None]
    assert torch.equal(preprocess(img)[None], x)
    texts = ["tumour nest with mitoses", "benign stroma"]
    hf_tok = AutoTokenizer.from_pretrained(str(folder), do_lower_case=True, trust_remote_code=False)
    inputs = hf_tok(texts, max_length=256, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref_img = torch.nn.functional.normalize(ref.visual_head(ref.visual(x)), dim=-1)
        ref_txt = torch.nn.functional.normalize(ref.text(**inputs).pooler_output, dim=-1)
        got_img = model.encode_image(x, normalize=True)
        got_txt = model.encode_text(tok(texts), normalize=True)
    assert torch.allclose(got_img, ref_img, atol=1e-6, rtol=0)
    assert torch.allclose(got_txt, ref_txt, atol=1e-6, rtol=0)
    from pathvlm.embed import embed_texts  # the padding trim is exact for KEEP's masked BERT

    assert torch.allclose(embed_texts(model, tok, texts), got_txt, atol=1e-6)


def test_keep_real_size_keys_on_meta():
    import timm
    from transformers import BertConfig, BertModel

    from pathvlm.clip.keep import VISION_KWARGS, KeepModel, vision_kwargs_from_weights

    text_config = BertConfig(vocab_size=30522).to_dict()  # PubMedBERT-base sizes
    with torch.device("meta"):
        visual = timm.create_model("vit_large_patch16_224", pretrained=False, **VISION_KWARGS)
        ref = {**{f"visual.{k}": v for k, v in visual.state_dict().items()},
               "visual_head.0.weight": torch.empty(768, 1024), "visual_head.0.bias": torch.empty(768),
               "visual_head.2.weight": torch.empty(768, 768), "visual_head.2.bias": torch.empty(768),
               **{f"text.{k}": v for k, v in BertModel(BertConfig(**text_config)).state_dict().items()},
               "logit_scale": torch.empty(())}
        ours = KeepModel({"text_config": text_config, "projection_dim": 768}, vision_kwargs_from_weights(ref))
    assert vision_kwargs_from_weights(ref) == {**VISION_KWARGS, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                                               "mlp_ratio": 4.0}
    sd = ours.state_dict()
    assert set(sd) == set(ref) and all(sd[k].shape == ref[k].shape for k in ref)


# ----------------------------------------------------------------------------- BiomedCLIP / QuiltNet-B-16-PMB
BERT_REPOS = {"BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
              "QuiltNet-B-16-PMB": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"}


def _hub_bert_layout(root: Path, name: str, tiny_bert_dir: Path) -> Path:
    """BiomedCLIP's open_clip_config.json (timm ViT + HF BERT named by hub id), tiny, with the tokenizer
    files in the folder as both hub repos ship them, weights in open_clip_pytorch_model.bin."""
    import open_clip

    repo = BERT_REPOS[name]
    text_cfg = {"hf_model_name": repo, "hf_tokenizer_name": repo, "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}
    vision_cfg = {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": 32}
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(embed_dim=16, vision_cfg=vision_cfg,
                                     text_cfg={**text_cfg, "hf_model_name": str(tiny_bert_dir),
                                               "hf_model_pretrained": False})
    folder = root / name
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 16, "vision_cfg": vision_cfg, "text_cfg": text_cfg},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    for f in tiny_bert_dir.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder


def _reference_open_clip(folder: Path, tiny_bert_dir: Path, tmp_path: Path):
    """What open_clip does online: the same folder with the hub repo reachable (here: a local copy)."""
    import open_clip

    online = tmp_path / "online"
    shutil.copytree(folder, online)
    cfg = json.loads((online / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"].update(hf_model_name=str(tiny_bert_dir), hf_tokenizer_name=str(tiny_bert_dir))
    (online / "open_clip_config.json").write_text(json.dumps(cfg))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{online}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{online}")


@pytest.mark.parametrize("name", list(BERT_REPOS))
def test_hub_bert_text_tower_offline(name, tmp_path, tiny_bert_dir, hub_cache, capsys):
    folder = _hub_bert_layout(tmp_path, name, tiny_bert_dir)
    repo = BERT_REPOS[name]
    for source in (str(folder), f"local-dir:{folder}"):
        with pytest.raises(SourceError, match=f"hub repo '{repo}'.*--text-tower DIR") as e:
            create_clip(source)
        assert "local-dir:" not in str(e.value)  # the hint that led nowhere is gone
    ref, ref_pre, ref_tok = _reference_open_clip(folder, tiny_bert_dir, tmp_path)
    img = he_like_tile(2, size=40)
    texts = ["tumour nest", "benign colonic mucosa"]
    with torch.no_grad():
        want = ref.encode_image(ref_pre(img)[None]), ref.encode_text(ref_tok(texts))
    tower = tmp_path / "tower"
    tower.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", tower / "config.json")  # only the architecture is needed
    model, pre, tok = create_clip(str(folder), text_tower=str(tower))
    with torch.no_grad():
        got = model.encode_image(pre(img)[None]), model.encode_text(tok(texts))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # found in the Hugging Face cache instead, and the model itself as an hf-hub: id from the cache
    make_hub_cache(hub_cache, repo, tower)
    make_hub_cache(hub_cache, f"someorg/{name}", folder)
    for source in (str(folder), f"hf-hub:someorg/{name}"):
        m, _, t = create_clip(source)
        with torch.no_grad():
            assert torch.equal(m.encode_text(t(texts)), want[1])
    from pathvlm.cli import main

    he_like_tile(3).save(tmp_path / "t.png")
    assert main(["classify", str(tmp_path / "t.png"), "--classes", "a,b", "--model", str(folder),
                 "--text-tower", str(tmp_path / "missing")]) == 2
    assert "--text-tower" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ARCH:/path/file.pt
@pytest.fixture()
def tiny_arch(tmp_path):
    import open_clip

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "pathvlm-test-arch.json").write_text(json.dumps(TINY_VIT_CFG))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(4)
    return open_clip.create_model("pathvlm-test-arch").eval()


def test_arch_with_checkpoint_file(tiny_arch, tmp_path):
    from safetensors.torch import save_file

    state = tiny_arch.state_dict()
    # open_clip's training script: {"epoch", "name", "state_dict": {"module." + key}, "optimizer"}
    torch.save({"epoch": 10, "name": "pathgen", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}, tmp_path / "pathgenclip.pt")
    torch.save(state, tmp_path / "plain.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for f in ("pathgenclip.pt", "plain.pth", "w.safetensors"):
        model, pre, tok = create_clip(f"pathvlm-test-arch:{tmp_path / f}")
        assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
        assert tok(["x"]).shape == (1, 16)
    with pytest.raises(SourceError, match="no such checkpoint file"):
        create_clip(f"pathvlm-test-arch:{tmp_path / 'nope.pt'}")
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(SourceError, match="do not fit the open_clip architecture pathvlm-test-arch.*missing"):
        create_clip(f"pathvlm-test-arch:{tmp_path / 'bad.pt'}")
    import argparse

    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")
    with pytest.raises(SourceError, match="could not read the weights"):
        create_clip(f"pathvlm-test-arch:{tmp_path / 'pickled.pt'}")


# ----------------------------------------------------------------------------- MUSK and remote code
def test_musk_and_remote_code_are_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    musk = tmp_path / "musk"
    musk.mkdir()
    save_file({"beit3.encoder.layers.0.self_attn.A.k_proj.weight": torch.zeros(2, 2)}, str(musk / "model.safetensors"))
    with pytest.raises(SourceError, match="MUSK .* is not supported: it is a BEiT-3"):
        create_clip(str(musk))
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "fancy", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(SourceError, match="never runs remote code"):
        create_clip(str(custom))


# ----------------------------------------------------------------------------- fine-tuning
@pytest.fixture()
def quiltnet_dir(tmp_path):
    """QuiltNet-B-32's hub layout (open_clip_config.json + open_clip_pytorch_model.bin), tiny."""
    from pathvlm.clip.factory import build_from_config

    model, _ = build_from_config(TINY_VIT_CFG, seed=5)
    folder = tmp_path / "QuiltNet-B-32"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_VIT_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def _one_step(tmp_path, model_dir, data):
    from train.clip.config import ClipTrainConfig
    from train.clip.trainer import train_clip

    cfg = ClipTrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), epochs=1,
                          batch_size=4, warmup_steps=1, lr=1e-2, lr_tower=1e-2, num_workers=0,
                          eval_task="lc25000_colon", seed=0, max_steps=1)
    train_clip(cfg)
    return tmp_path / "run" / "final"


def test_train_clip_one_step_from_quiltnet_layout(tmp_path, quiltnet_dir, built_fixture_data):
    before = create_clip(str(quiltnet_dir))[0].state_dict()
    final = _one_step(tmp_path, quiltnet_dir, built_fixture_data)
    after = create_clip(str(final))[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.transformer.") for k in changed) and "visual.proj" in changed
    assert "logit_scale" in changed
    text = [k for k in before if k.startswith(("transformer.", "token_embedding", "positional_embedding",
                                               "ln_final", "text_projection"))]
    assert text and not changed & set(text)  # the locked text tower is untouched


def test_train_clip_one_step_from_conch_layout(tmp_path, tiny_conch_dir, built_fixture_data):
    before = create_clip(str(tiny_conch_dir))[0].state_dict()
    final = _one_step(tmp_path, tiny_conch_dir, built_fixture_data)
    assert (final / "meta.yaml").exists() and (final / "model.safetensors").exists()
    assert (final / "tokenizer.json").exists()  # the fine-tuned folder is self-contained, CONCH's layout
    after = create_clip(str(final))[0].state_dict()
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for prefix in ("visual.trunk.blocks.", "visual.attn_pool_contrast.", "visual.ln_contrast."):
        assert any(k.startswith(prefix) for k in changed), prefix
    assert "visual.proj_contrast" in changed and "logit_scale" in changed
    assert not any(k.startswith(("text.", "text_decoder.", "visual.attn_pool_caption.")) for k in changed)
