"""Image-only foundation models: each family rebuilt tiny, with random weights, in its published hub
layout, loaded by pathvlm and compared with the reference code path the model card gives (timm's
own hub loader with the card's kwargs, or transformers); the real sizes checked for key coverage
on the meta device; and the commands that take them (index build, search --image, eval)."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import he_like_tile, make_hub_cache
from pathvlm.encoders.factory import ImageOnlySource, create_image_encoder
from pathvlm.errors import SourceError

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HOPT = {"mean": [0.707223, 0.578729, 0.703617], "std": [0.211883, 0.230117, 0.177517]}


def swiglu():
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


# name: (hub repo, architecture, config.json as published (tiny dims), weights file, card kwargs, pooling)
# config layouts: UNI keeps its arguments at the top level; the others under model_args
FAMILIES = {
    "uni": ("MahmoodLab/UNI", {
        "architecture": "vit_large_patch16_224", **TINY, "init_values": 1.0, "num_classes": 0, "num_features": 32,
        "global_pool": "token", "dynamic_img_size": True,
        "pretrained_cfg": {"tag": "uni_mass100k", "custom_load": True, "crop_pct": 1, "input_size": [3, 32, 32],
                           "fixed_input_size": False, "interpolation": "bilinear", **IMAGENET, "num_classes": 0}},
        "pytorch_model.bin", lambda: {**TINY, "init_values": 1e-5, "dynamic_img_size": True}, "cls"),
    "uni2-h": ("MahmoodLab/UNI2-h", {
        "architecture": "vit_giant_patch14_224",
        "model_args": {**TINY, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0, "no_embed_class": True,
                       "reg_tokens": 8, "dynamic_img_size": True},
        "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 1.0, **IMAGENET}},
        "pytorch_model.bin", lambda: {**TINY, "init_values": 1e-5, "mlp_ratio": 5.33334, "num_classes": 0,
                                      "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True, **swiglu()},
        "cls"),
    "virchow": ("paige-ai/Virchow", {
        "architecture": "vit_huge_patch14_224",
        "model_args": {**TINY, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375, "global_pool": "",
                       "dynamic_img_size": True},
        "pretrained_cfg": {"tag": "virchow_v1", "input_size": [3, 32, 32], "interpolation": "bicubic",
                           "crop_pct": 1.0, "crop_mode": "center", **IMAGENET, "num_classes": 0}},
        "pytorch_model.bin", swiglu, "cls+mean:1"),
    "virchow2": ("paige-ai/Virchow2", {
        "architecture": "vit_huge_patch14_224",
        "model_args": {**TINY, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375,
                       "global_pool": "", "dynamic_img_size": True},
        "pretrained_cfg": {"tag": "virchow_v2", "input_size": [3, 32, 32], "interpolation": "bicubic",
                           "crop_pct": 1.0, "crop_mode": "center", **IMAGENET, "num_classes": 0}},
        "model.safetensors", swiglu, "cls+mean:5"),
    "h-optimus-0": ("bioptimus/H-optimus-0", {
        "architecture": "vit_giant_patch14_reg4_dinov2", "num_classes": 0, "num_features": 32, "global_pool": "token",
        "model_args": {**TINY, "num_classes": 0, "global_pool": "token"},
        "pretrained_cfg": {"input_size": [3, 32, 32], **HOPT, "num_classes": 0}},
        "pytorch_model.bin", lambda: {"init_values": 1e-5, "dynamic_img_size": False}, "cls"),
    "prov-gigapath": ("prov-gigapath/prov-gigapath", {
        "architecture": "vit_giant_patch14_dinov2", "num_classes": 0, "num_features": 32, "global_pool": "token",
        "model_args": {**TINY, "in_chans": 3, "init_values": 1e-05, "mlp_ratio": 5.33334, "num_classes": 0},
        "pretrained_cfg": {"tag": "", "input_size": [3, 32, 32], "fixed_input_size": True, "interpolation": "bicubic",
                           "crop_pct": 1.0, "crop_mode": "center", **IMAGENET, "num_classes": 0}},
        "pytorch_model.bin", dict, "cls"),
}


def card_transform(name, size=32):
    """The model cards' transforms, at the tiny size."""
    from torchvision import transforms as T

    if name == "h-optimus-0":  # ToTensor + Normalize on tiles of the model's size
        return T.Compose([T.ToTensor(), T.Normalize(**HOPT)])
    if name == "prov-gigapath":  # Resize(256, bicubic) + CenterCrop(224), scaled
        return T.Compose([T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
                          T.CenterCrop(size), T.ToTensor(), T.Normalize(**IMAGENET)])
    return None  # timm's create_transform(**resolve_data_config(model.pretrained_cfg, model=model))


def write_family(root: Path, name: str, seed: int = 0) -> Path:
    """A tiny random model of the family saved in its hub repo's layout (config.json + weights file)."""
    import timm

    repo, config, weights, card, _ = FAMILIES[name]
    folder = root / repo.split("/")[-1]
    folder.mkdir(parents=True)
    skip = ("architecture", "pretrained_cfg", "model_args", "num_features")
    args = {k: v for k, v in config.items() if k not in skip}
    args.update(config.get("model_args", {}))
    args.update(card())
    torch.manual_seed(seed)
    model = timm.create_model(config["architecture"], pretrained=False, **args)
    with torch.no_grad():  # LayerScale and norms away from their init so that every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_equals_timm_hub_loading_with_the_card_kwargs(name, tmp_path, hub_cache):
    import timm
    from timm.data import create_transform, resolve_data_config

    repo, config, _, card, pooling = FAMILIES[name]
    folder = write_family(tmp_path, name)
    make_hub_cache(hub_cache, repo, folder)
    # the reference: what the model card runs, served from the (offline) hub cache
    ref = timm.create_model(f"hf-hub:{repo}", pretrained=True, **card()).eval()
    ref_tf = card_transform(name) or create_transform(**resolve_data_config(ref.pretrained_cfg, model=ref))
    img = he_like_tile(3, size=32 if name == "h-optimus-0" else 48)  # H-optimus: tiles at the model size
    with torch.no_grad():
        out = ref(ref_tf(img)[None])
        if pooling.startswith("cls+mean"):
            start = int(pooling.split(":")[1])
            out = torch.cat([out[:, 0], out[:, start:].mean(1)], dim=-1)
    for source in (str(folder), f"hf-hub:{repo}", f"local-dir:{folder}"):
        enc, preprocess = create_image_encoder(source)
        assert enc.known == name
        x = preprocess(img)[None]
        assert torch.equal(x, ref_tf(img)[None]), "pixels differ from the card's transform"
        with torch.no_grad():
            got = enc.encode_image(x)
        assert got.shape == out.shape
        assert torch.allclose(got, out, atol=1e-6, rtol=0), (name, (got - out).abs().max())
    with pytest.raises(ImageOnlySource, match="image-only encoder.*cannot do zero-shot"):
        __import__("pathvlm").create_clip(str(folder))


REAL = {  # the published config.json (JSON-able part) and the card's kwargs, at the real sizes
    "uni": ({"architecture": "vit_large_patch16_224", "patch_size": 16, "img_size": 224, "init_values": 1.0,
             "num_classes": 0, "global_pool": "token", "dynamic_img_size": True},
            # the UNI README's manual construction
            lambda: {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                     "dynamic_img_size": True}, 1024),
    "uni2-h": ({"architecture": "vit_giant_patch14_224"},
               lambda: {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                        "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "num_classes": 0, "no_embed_class": True,
                        "reg_tokens": 8, "dynamic_img_size": True, **swiglu()}, 1536),
    "virchow2": ({"architecture": "vit_huge_patch14_224",
                  "model_args": {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                                 "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True},
                  "pretrained_cfg": {"tag": "virchow_v2"}},
                 lambda: {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
                          "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True, **swiglu()}, 2560),
    "h-optimus-0": ({"architecture": "vit_giant_patch14_reg4_dinov2", "model_args": {"img_size": 224, "num_classes": 0},
                     "pretrained_cfg": {"mean": HOPT["mean"], "std": HOPT["std"]}},
                    lambda: {"img_size": 224, "num_classes": 0, "init_values": 1e-5, "dynamic_img_size": False}, 1536),
    "prov-gigapath": ({"architecture": "vit_giant_patch14_dinov2",
                       "model_args": {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                                      "num_heads": 24, "init_values": 1e-05, "mlp_ratio": 5.33334, "num_classes": 0}},
                      lambda: {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                               "num_heads": 24, "init_values": 1e-05, "mlp_ratio": 5.33334, "num_classes": 0}, 1536),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_size_state_dict_keys_match_the_card_on_meta(name):
    """pathvlm's constructor (config.json + registry, no weights) builds exactly the tensors the card's call does."""
    import timm

    from pathvlm.encoders.known import KNOWN_ENCODERS, match_known
    from pathvlm.encoders.model import ImageEncoder
    from pathvlm.encoders.timm_hub import build_timm, constructor_kwargs

    config, card, dim = REAL[name]
    known = match_known(config, folder_name=FAMILIES[name][0].split("/")[-1])
    assert known is KNOWN_ENCODERS[name]
    ours = build_timm(config, constructor_kwargs(config, known, None), device="meta").state_dict()
    with torch.device("meta"):
        ref = timm.create_model(config["architecture"], pretrained=False, **card()).state_dict()
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    with torch.device("meta"):
        enc = ImageEncoder(build_timm(config, constructor_kwargs(config, known, None), device="meta"), "timm",
                           known.pooling, {}, name)
    assert enc.embed_dim == dim == known.dim


def test_folder_identified_by_its_files_not_only_its_name(tmp_path):
    folder = write_family(tmp_path, "virchow2")
    renamed = folder.rename(tmp_path / "my-copy")  # tag virchow_v2 in pretrained_cfg still says what it is
    enc, _ = create_image_encoder(str(renamed))
    assert enc.known == "virchow2" and enc.pooling == "cls+mean" and enc.num_prefix_tokens == 5


def test_unknown_timm_folder_infers_swiglu_layerscale_registers_from_weights(tmp_path):
    """A timm folder no registry entry knows, whose config omits the objects JSON cannot hold."""
    import timm

    folder = write_family(tmp_path, "uni2-h")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_args"] = {k: v for k, v in cfg["model_args"].items() if k not in ("init_values", "reg_tokens")}
    (folder / "config.json").write_text(json.dumps(cfg))
    unknown = folder.rename(tmp_path / "someone-elses-vit")
    enc, pre = create_image_encoder(str(unknown))
    assert enc.known is None and enc.pooling == "timm"
    ref = timm.create_model("vit_giant_patch14_224", **{**cfg["model_args"], "init_values": 1e-5,
                                                                      "reg_tokens": 8, **swiglu()}).eval()
    ref.load_state_dict(torch.load(unknown / "pytorch_model.bin", weights_only=True))
    x = pre(he_like_tile(1))[None]
    with torch.no_grad():
        assert torch.allclose(enc.encode_image(x), ref(x), atol=1e-6, rtol=0)


def test_named_folder_form_and_bad_folders(tmp_path):
    folder = write_family(tmp_path, "virchow")
    plain = folder.rename(tmp_path / "weights")
    cfg = json.loads((plain / "config.json").read_text())
    cfg["pretrained_cfg"].pop("tag")
    (plain / "config.json").write_text(json.dumps(cfg))
    enc, _ = create_image_encoder(str(plain))
    assert enc.known == "virchow"  # no name, no tag: its architecture signature (ViT-H/14, no registers)
    enc, _ = create_image_encoder(f"virchow:{plain}")
    assert enc.known == "virchow" and enc.pooling == "cls+mean"
    with pytest.raises(SourceError, match="no such folder"):
        create_image_encoder(f"virchow2:{tmp_path / 'nope'}")
    (plain / "pytorch_model.bin").unlink()
    with pytest.raises(SourceError, match="no weights file"):
        create_image_encoder(str(plain))
    torch.save({"blocks.0.norm1.weight": torch.zeros(3)}, plain / "pytorch_model.bin")
    with pytest.raises(SourceError, match="do not fit.*missing"):
        create_image_encoder(str(plain))
    (plain / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(SourceError, match="could not read the weights"):
        create_image_encoder(str(plain))


def test_pickled_code_in_weights_is_refused(tmp_path):
    import argparse

    folder = write_family(tmp_path, "uni")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["args"] = argparse.Namespace(lr=1)  # a Python object: only a full unpickler would restore it
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(SourceError, match="could not read the weights"):
        create_image_encoder(str(folder))


def _tiny_hf_vision(root: Path, kind: str) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model, ViTConfig, ViTImageProcessor, ViTModel

    folder = root / ("phikon" if kind == "vit" else "phikon-v2")
    torch.manual_seed(0)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    if kind == "vit":
        ViTModel(ViTConfig(**common)).save_pretrained(folder)
        ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=IMAGENET["mean"],
                          image_std=IMAGENET["std"]).save_pretrained(folder)
    else:
        Dinov2Model(Dinov2Config(**common)).save_pretrained(folder)
        BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_convert_rgb=True,
                          image_mean=IMAGENET["mean"], image_std=IMAGENET["std"]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind,cls", [("vit", "ViTModel"), ("dinov2", "Dinov2Model")])
def test_phikon_layouts_equal_transformers(kind, cls, tmp_path, hub_cache):
    import transformers
    from transformers import AutoImageProcessor

    folder = _tiny_hf_vision(tmp_path, kind)
    extra = {"add_pooling_layer": False} if kind == "vit" else {}
    ref = getattr(transformers, cls).from_pretrained(str(folder), **extra).eval()
    proc = AutoImageProcessor.from_pretrained(str(folder))
    img = he_like_tile(5, size=40)
    with torch.no_grad():  # the model cards: outputs.last_hidden_state[:, 0, :]
        out = ref(**proc(img, return_tensors="pt")).last_hidden_state[:, 0, :]
    make_hub_cache(hub_cache, f"owkin/{folder.name}", folder)
    for source in (str(folder), f"hf:owkin/{folder.name}"):
        enc, pre = create_image_encoder(source)
        assert enc.known == folder.name
        with torch.no_grad():
            assert torch.equal(enc.encode_image(pre(img)[None]), out)


def test_clip_sources_come_back_as_their_clip_model(tiny_clip_dir):
    enc, pre = create_image_encoder(str(tiny_clip_dir))
    assert hasattr(enc, "encode_text") and not getattr(enc, "is_image_only", False)


def test_index_build_and_image_search_with_an_image_encoder(tmp_path, tile_folder, capsys):
    from pathvlm.cli import main

    folder = write_family(tmp_path, "virchow2")
    out = tmp_path / "idx"
    assert main(["index", "build", str(tile_folder), "--out", str(out), "--model", str(folder)]) == 0
    info = json.loads((out / "index.json").read_text())
    assert info["dim"] == 64 and info["count"] == 6  # CLS + patch mean, 2 x 32
    capsys.readouterr()
    assert main(["search", str(out), "--image", str(tile_folder / "a" / "tile1.png"), "--json", "-k", "2"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits[0]["path"] == "a/tile1.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert main(["search", str(out), "tumour nests"]) == 2
    err = capsys.readouterr().err
    assert "image-only encoder" in err and "cannot do zero-shot" in err and "Traceback" not in err
    assert main(["classify", str(tile_folder / "a" / "tile1.png"), "--classes", "a,b", "--model", str(folder)]) == 2
    assert "image-only encoder" in capsys.readouterr().err


def test_eval_probe_few_shot_retrieval_with_an_image_encoder(tmp_path, built_fixture_data):
    import yaml

    from evals.runner import run_eval

    folder = write_family(tmp_path, "uni")
    dataset = {"kind": "built", "build_dir": str(built_fixture_data), "dataset": "clip", "split": "test"}
    tasks = {}
    for kind, extra in (("linear_probe", {}), ("few_shot", {"shots": [1], "seeds": [0]}), ("retrieval", {}),
                        ("zeroshot", {"prompts": "lc25000_colon"})):
        path = tmp_path / f"t_{kind}.yaml"
        path.write_text(yaml.safe_dump({"name": f"t_{kind}", "kind": kind, "dataset": dataset, **extra}))
        tasks[kind] = str(path)
    res = run_eval(str(folder), [tasks["linear_probe"], tasks["few_shot"], tasks["retrieval"]], tmp_path / "run")
    m = res["tasks"]
    assert 0 <= m["t_linear_probe"]["metrics"]["balanced_accuracy"] <= 1
    assert "1-shot" in m["t_few_shot"]["metrics"]
    assert 0 <= m["t_retrieval"]["metrics"]["image_class_P@5"] <= 1
    assert "t2i_R@1" not in m["t_retrieval"]["metrics"]
    from pathvlm.errors import PathVLMError

    with pytest.raises(PathVLMError, match="t_zeroshot: zero-shot tasks need a text tower"):
        run_eval(str(folder), [tasks["zeroshot"], tasks["linear_probe"]], tmp_path / "run2")


def test_image_encoder_python_api_shapes(tmp_path):
    import pathvlm

    folder = write_family(tmp_path, "h-optimus-0")
    enc, pre = pathvlm.create_image_encoder(str(folder))
    x = torch.stack([pre(Image.new("RGB", (32, 32), (200, 120, 180))), pre(he_like_tile(2, size=32))])
    with torch.no_grad():
        e = enc.encode_image(x, normalize=True)
    assert e.shape == (2, 32) and torch.allclose(e.norm(dim=-1), torch.ones(2))
    assert pre.transforms[-1].mean == HOPT["mean"]
    shutil.rmtree(folder)


def test_legacy_non_zip_checkpoints_load(tmp_path):
    """pytorch_model.bin files written before torch 1.6 cannot be memory-mapped: read normally instead."""
    folder = write_family(tmp_path, "uni")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    enc, _ = create_image_encoder(str(folder))
    assert torch.equal(enc.backbone.state_dict()["cls_token"], state["cls_token"])
