"""Parity at the real sizes (not run by the test suite: minutes and gigabytes).

For UNI, UNI2-h and Virchow2: a model of the published size with random weights, built the way the
model card builds it (``timm.create_model`` with the card's kwargs), saved in the hub layout
(config.json as published + pytorch_model.bin / model.safetensors), loaded back by
``pathvlm.create_image_encoder`` and compared with the card's own forward and pooling on real
H&E tiles. For CONCH (when ``make_conch_reference.py --real DIR`` has been run in the reference
environment): CONCH's own outputs at 448 px against ``pathvlm.create_clip`` on the same folder.

    .venv/bin/python tests/reference/real_size_parity.py [--conch DIR] [--out results.json]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def tiles(n: int = 4):
    """Real H&E tiles from ../shared/data when present, else the stain-like synthetic ones."""
    from PIL import Image

    root = Path(__file__).resolve().parents[3] / "shared" / "data"
    files = sorted(root.rglob("*.jpeg"))[:n] + sorted(root.rglob("*.png"))[:n] if root.exists() else []
    if files:
        return [Image.open(f).convert("RGB") for f in files[:n]], "shared/data tiles"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import he_like_tile

    return [he_like_tile(i, size=256) for i in range(n)], "synthetic tiles"


def timm_family(name: str, workdir: Path, images) -> dict:
    import timm
    from timm.layers import SwiGLUPacked

    from pathvlm.encoders.factory import create_image_encoder

    swiglu = {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}
    specs = {
        "uni": ("vit_large_patch16_224", {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                                          "dynamic_img_size": True},
                {"architecture": "vit_large_patch16_224", "patch_size": 16, "img_size": 224, "init_values": 1.0,
                 "num_classes": 0, "global_pool": "token", "dynamic_img_size": True,
                 "pretrained_cfg": {"tag": "uni_mass100k", "crop_pct": 1, "input_size": [3, 224, 224],
                                    "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                    "std": [0.229, 0.224, 0.225]}}, "pytorch_model.bin", 0),
        "uni2-h": ("vit_giant_patch14_224", {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                                             "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                                             "num_classes": 0, "no_embed_class": True, "reg_tokens": 8,
                                             "dynamic_img_size": True, **swiglu},
                   {"architecture": "vit_giant_patch14_224"}, "pytorch_model.bin", 0),
        "virchow2": ("vit_huge_patch14_224", {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                                              "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                                              **swiglu},
                     {"architecture": "vit_huge_patch14_224",
                      "model_args": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                                     "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True},
                      "pretrained_cfg": {"tag": "virchow_v2", "input_size": [3, 224, 224], "interpolation": "bicubic",
                                         "crop_pct": 1.0, "crop_mode": "center", "mean": [0.485, 0.456, 0.406],
                                         "std": [0.229, 0.224, 0.225]}}, "model.safetensors", 5),
    }
    arch, card, config, weights, patch_start = specs[name]
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms as T

    torch.manual_seed(0)
    ref = timm.create_model(arch, pretrained=False, **card).eval()
    folder = workdir / name
    folder.mkdir()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    del state
    (folder / "config.json").write_text(json.dumps(config))
    if name == "uni2-h":  # its card: Resize(224), ToTensor, Normalize(ImageNet)
        tf = T.Compose([T.Resize(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    else:
        tf = create_transform(**resolve_data_config(config.get("pretrained_cfg", {}), model=ref))
    t0 = time.perf_counter()
    enc, pre = create_image_encoder(str(folder))
    load_s = time.perf_counter() - t0
    x_ref = torch.stack([tf(im) for im in images])
    x = torch.stack([pre(im) for im in images])
    with torch.inference_mode():
        out = ref(x_ref)
        if patch_start:
            out = torch.cat([out[:, 0], out[:, patch_start:].mean(1)], dim=-1)
        got = enc.encode_image(x)
    result = {"params_M": round(sum(p.numel() for p in ref.parameters()) / 1e6, 1), "dim": got.shape[-1],
              "max_abs_diff": float((got - out).abs().max()), "pixels_max_abs_diff": float((x - x_ref).abs().max()),
              "load_seconds": round(load_s, 1)}
    del ref, enc
    gc.collect()
    return result


def conch(folder: Path) -> dict:
    from safetensors.torch import load_file

    from pathvlm.clip.factory import create_clip

    ref = load_file(str(folder / "reference_outputs.safetensors"))
    model, _, tok = create_clip(str(folder))
    with torch.inference_mode():
        img = model.encode_image(ref["pixels"])
        txt = model.encode_text(ref["text"])
    return {"image_max_abs_diff": float((img - ref["image_embedding"]).abs().max()),
            "text_max_abs_diff": float((txt - ref["text_embedding"]).abs().max()), "dim": img.shape[-1]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="uni,virchow2,uni2-h")
    ap.add_argument("--conch", default=None, help="folder written by make_conch_reference.py --real")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    images, what = tiles()
    results = {"images": what, "torch": torch.__version__, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            if name:
                results["families"][name] = timm_family(name, Path(tmp), images)
                print(name, results["families"][name], flush=True)
    if args.conch:
        results["families"]["conch"] = conch(Path(args.conch))
        print("conch", results["families"]["conch"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
