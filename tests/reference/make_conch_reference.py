"""Reference outputs of CONCH's own code, made once and committed (tests/data/conch_*).

CONCH's package pins the transformers 4 API (its ``tokenize()`` calls ``batch_encode_plus``) and its
licence forbids derivatives, so pathvlm's loader (pathvlm/clip/conch.py) is written from the
architecture and checked against what this script records with the real package:

- ``conch_tiny/pytorch_model.bin``: a tiny CONCH (``conch.open_clip_custom.coca_model.CoCa``, 2 layers,
  width 32) with seeded random weights, saved with ``torch.save(model.state_dict())`` as the hub
  checkpoint is, plus a ``meta.yaml`` naming the head counts its tensors cannot show;
- ``conch_reference.safetensors``: inputs (pixels, token ids) and CONCH's outputs on them:
  ``encode_image`` (contrastive, and ``proj_contrast=False``), ``encode_text``, the caption
  decoder's logits (``forward``), all unnormalised;
- ``conch_reference.json``: package versions, the real-size (conch_ViT-B-16) state-dict keys and
  shapes, and the real tokenizer's ids for a few sentences with the
  sha256 of the tokenizer file they came from.

Run in a separate environment with the reference package (this machine: a venv in /tmp reusing
pathvlm's torch through a .pth file, so nothing is downloaded twice)::

    python3 -m venv /tmp/conchref/venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/conchref/venv/lib/python3.11/site-packages/zz_main.pth
    /tmp/conchref/venv/bin/pip install --no-deps timm==0.9.8 transformers==4.38.2 tokenizers==0.15.2 \\
        huggingface_hub==0.21.4 conch-fork==0.1.0
    /tmp/conchref/venv/bin/python tests/reference/make_conch_reference.py
    /tmp/conchref/venv/bin/python tests/reference/make_conch_reference.py --real /tmp/conch_real  # optional

(``conch-fork`` on PyPI packages github.com/mahmoodlab/CONCH's ``conch`` module unchanged.)
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "data"
TINY = {
    "embed_dim": 16, "embed_dim_caption": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 32, "num_heads": 2, "mlp_ratio": 4,
                   "attentional_pool_caption": True, "attentional_pool_contrast": True, "attn_pooler_heads": 2,
                   "n_queries_contrast": 1, "n_queries_caption": 4, "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2, "embed_cls": True,
                 "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2},
}
# what the tiny model's tensors cannot show (head counts), in the form pathvlm reads from meta.yaml; the
# attentional poolers always have 8 heads in CONCH (VisualModel's default: attn_pooler_heads is not passed on)
TINY_META = "model_name: conch_tiny (pathvlm test copy, random weights)\n" \
            "pathvlm_cfg: {vision_heads: 2, text_heads: 2, decoder_heads: 2}\n"
SENTENCES = ["an H&E image of adenocarcinoma.", "benign colonic mucosa with goblet cells",
             "Tumour nests infiltrating desmoplastic stroma; mitoses are frequent."]


def seeded_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Every tensor drawn again from a seed (CONCH's own init leaves some uninitialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(".weight") and p.ndim == 1:  # norms
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def write_real(out: Path) -> None:
    """``--real DIR``: a conch_ViT-B-16 of the published size with seeded random weights, saved as the hub
    repo is (pytorch_model.bin + meta.yaml), CONCH's tokenizer beside it, and CONCH's outputs on two
    448 px inputs and the real tokenizer's ids (for real_size_parity.py; nothing here is committed)."""
    import shutil

    from conch.open_clip_custom import coca_model
    from conch.open_clip_custom.custom_tokenizer import DEFAULT_TOKENIZER, TOKENIZER_DIR, get_tokenizer, tokenize
    from conch.open_clip_custom.factory import CFG_DIR
    from safetensors.torch import save_file

    cfg = json.loads((CFG_DIR / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text", None)
    model = coca_model.CoCa(**cfg).eval()
    seeded_weights(model, seed=2)
    with torch.no_grad():  # std 0.1 noise in 12 layers of width 768 saturates; keep activations sane
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.mul_(0.2)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    (out / "meta.yaml").write_text("model_name: conch_ViT-B-16 (random weights, real size)\n")
    shutil.copyfile(TOKENIZER_DIR / DEFAULT_TOKENIZER, out / "tokenizer.json")
    pixels = torch.randn(2, 3, 448, 448, generator=torch.Generator().manual_seed(3))
    text = tokenize(get_tokenizer(), SENTENCES)
    with torch.no_grad():
        save_file({"pixels": pixels, "text": text,
                   "image_embedding": model.encode_image(pixels, normalize=False).contiguous(),
                   "text_embedding": model.encode_text(text, normalize=False).contiguous()},
                  str(out / "reference_outputs.safetensors"))
    print(f"wrote the real-size CONCH and its outputs to {out}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--real":
        write_real(Path(sys.argv[2]))
        return 0
    import timm
    import tokenizers
    import transformers
    from conch.open_clip_custom import coca_model
    from conch.open_clip_custom.custom_tokenizer import DEFAULT_TOKENIZER, TOKENIZER_DIR, get_tokenizer, tokenize
    from conch.open_clip_custom.factory import CFG_DIR
    from importlib.metadata import version

    torch.manual_seed(0)
    model = coca_model.CoCa(**TINY).eval()
    seeded_weights(model)
    folder = OUT / "conch_tiny"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "meta.yaml").write_text(TINY_META)

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 32, 32, generator=g)
    text = torch.zeros(3, 16, dtype=torch.long)  # <start_of_text>=1 ... <end_of_text>=2, <pad>=0 after
    text[0, :6] = torch.tensor([1, 5, 9, 23, 40, 2])
    text[1, :3] = torch.tensor([1, 7, 2])
    text[2, :15] = torch.randint(3, 64, (15,), generator=g)
    text[2, 0], text[2, 14] = 1, 2
    with torch.no_grad():
        out = {
            "pixels": pixels, "text": text,
            "image_embedding": model.encode_image(pixels, normalize=False),
            "image_pooled_no_proj": model.encode_image(pixels, normalize=False, proj_contrast=False),
            "text_embedding": model.encode_text(text, normalize=False),
            "caption_logits": model(pixels, text)["logits"],
        }
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT / "conch_reference.safetensors"))

    real_cfg = json.loads((CFG_DIR / "conch_ViT-B-16.json").read_text())
    real_cfg.pop("custom_text", None)
    real = coca_model.CoCa(**real_cfg)  # (this timm cannot build on the meta device)
    tok_file = TOKENIZER_DIR / DEFAULT_TOKENIZER
    tok = get_tokenizer()
    record = {
        "made_by": "tests/reference/make_conch_reference.py",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "conch-fork": version("conch-fork")},
        "tiny_config": TINY,
        "real_config": real_cfg,
        "real_state_dict": {k: list(v.shape) for k, v in real.state_dict().items()},
        "tokenizer": {"file": DEFAULT_TOKENIZER, "sha256": hashlib.sha256(tok_file.read_bytes()).hexdigest(),
                      "sentences": SENTENCES, "ids": tokenize(tok, SENTENCES).tolist()},
    }
    (OUT / "conch_reference.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {folder} and {OUT / 'conch_reference.*'} ({len(record['real_state_dict'])} real-size keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
