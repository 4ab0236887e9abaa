"""PathCLIP training on a tiny model: what trains, what stays locked, exact resume, safe checkpoints."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from train.clip import checkpoint as ckpt
from train.clip.config import ClipTrainConfig, load_config
from train.clip.trainer import train_clip

pytest.importorskip("accelerate")


@pytest.fixture()
def built_data(recipe_dir):
    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe

    recipe = load_recipe(recipe_dir / "recipe.yaml")
    recipe.splits.ratios = {"train": 0.7, "test": 0.3}
    build_recipe(recipe, recipe_dir / "data", progress=False)
    return recipe_dir / "data"


def config(tmp_path, model_dir, data, **kw):
    base = dict(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), epochs=1, batch_size=4,
                warmup_steps=1, lr=1e-2, lr_tower=1e-2, num_workers=0, eval_task="lc25000_colon", seed=0)
    base.update(kw)
    return ClipTrainConfig(**base)


def weights(folder):
    return load_file(str(folder / "open_clip_model.safetensors"))


def test_one_step_changes_trainable_weights_only(tmp_path, tiny_clip_dir, built_data):
    before = weights(tiny_clip_dir)
    result = train_clip(config(tmp_path, tiny_clip_dir, built_data, max_steps=1))
    after = weights(tmp_path / "run" / "final")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.trunk.") for k in changed)
    assert any(k.startswith("visual.head.") for k in changed) and "text.proj.weight" in changed
    assert not any(k.startswith("text.transformer.") for k in changed)  # locked text tower untouched
    assert result["history"][0]["step"] == 1
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_locked_image_tower_keeps_trunk(tmp_path, tiny_clip_dir, built_data):
    before = weights(tiny_clip_dir)
    train_clip(config(tmp_path, tiny_clip_dir, built_data, max_steps=1, lock_image=True))
    after = weights(tmp_path / "run" / "final")
    for k in before:
        if k.startswith("visual.trunk."):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["visual.head.proj.weight"], after["visual.head.proj.weight"])


def test_crash_and_resume_gives_the_same_weights(tmp_path, tiny_clip_dir, built_data):
    common = dict(epochs=2, save_every_steps=2)
    train_clip(config(tmp_path / "a", tiny_clip_dir, built_data, **common))
    cfg_b = config(tmp_path / "b", tiny_clip_dir, built_data, **common)
    with pytest.raises(KeyboardInterrupt):
        train_clip(cfg_b, crash_at_step=5)  # mid-epoch 2 (3 batches per epoch), after the save at step 4
    done = ckpt.complete_checkpoints(tmp_path / "b" / "run" / "checkpoints")
    assert [p.name for p in done][-1] == "step-000004"
    train_clip(cfg_b)  # resumes from step 4
    a, b = weights(tmp_path / "a" / "run" / "final"), weights(tmp_path / "b" / "run" / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hist_a = json.loads((tmp_path / "a" / "run" / "history.json").read_text())["history"]
    hist_b = json.loads((tmp_path / "b" / "run" / "history.json").read_text())["history"]
    assert hist_a[-1] == hist_b[-1]


def test_interrupted_save_is_never_resumed_from(tmp_path, tiny_clip_dir, built_data):
    cfg = config(tmp_path, tiny_clip_dir, built_data, epochs=1)
    train_clip(cfg)
    root = tmp_path / "run" / "checkpoints"
    good = ckpt.latest_checkpoint(root)
    # a save that died half-way: a temporary folder, and a final-looking folder without the marker
    shutil.copytree(good, root / ".tmp-step-000999")
    shutil.copytree(good, root / "step-000998")
    (root / "step-000998" / ckpt.MARKER).unlink()
    (root / "step-000998" / "model" / "open_clip_model.safetensors").write_bytes(b"truncated")
    assert ckpt.latest_checkpoint(root) == good
    cfg.epochs = 2
    train_clip(cfg)  # resumes from the good checkpoint and finishes epoch 2
    assert ckpt.latest_checkpoint(root).name > good.name


def test_lora_text_trains_adapters_and_exports_merged(tmp_path, tiny_clip_dir, built_data):
    from pathvlm.clip.factory import create_clip

    before = weights(tiny_clip_dir)
    train_clip(config(tmp_path, tiny_clip_dir, built_data, max_steps=2, lock_text=False, lora_text=True,
                      cache_text_features=False))
    after = weights(tmp_path / "run" / "final")
    assert before.keys() == after.keys()  # merged: no adapter tensors left in the export
    changed = [k for k in before if k.startswith("text.transformer.") and not torch.equal(before[k], after[k])]
    assert changed and all(("query" in k or "value" in k) and k.endswith("weight") for k in changed)
    create_clip(str(tmp_path / "run" / "final"))


def test_siglip_loss_runs(tmp_path, tiny_clip_dir, built_data):
    from pathvlm.clip.factory import create_clip

    train_clip(config(tmp_path, tiny_clip_dir, built_data, max_steps=1, loss="siglip"))
    model, _, _ = create_clip(str(tmp_path / "run" / "final"))
    assert model.logit_bias is not None


def test_unicl_loss_is_clips_loss_when_no_two_rows_share_a_label():
    from open_clip.loss import ClipLoss

    from train.clip.losses import UniClLoss, unicl_targets

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    clip = ClipLoss()(img, txt, scale)
    for labels in (torch.arange(6), torch.full((6,), -1), torch.tensor([0, 1, 2, -1, 3, -1])):
        assert torch.allclose(UniClLoss()(img, txt, scale, labels), clip, atol=1e-6)
    # rows sharing a label are one another's positives; unlabelled rows (-1) match only their own caption
    t = unicl_targets(torch.tensor([0, 0, 1, -1, -1]))
    assert torch.allclose(t.sum(1), torch.ones(5))
    assert t[0, 1] == t[1, 0] == 0.5 and t[0, 2] == 0 and t[3, 4] == 0 and t[3, 3] == 1


def test_unicl_loss_pulls_a_tile_towards_its_classmates_caption_where_clip_pushes_it_away():
    from open_clip.loss import ClipLoss

    from train.clip.losses import UniClLoss

    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)

    def towards_classmate(loss):  # d loss / d (tile 0's similarity to caption 1), through tile 0's embedding
        (grad,) = torch.autograd.grad(loss, img)
        return float(grad[0] @ txt[1])

    assert towards_classmate(ClipLoss()(img, txt, scale)) > 0  # more alike -> higher loss: pushed apart
    assert towards_classmate(UniClLoss()(img, txt, scale, torch.tensor([0, 0, 1, 2]))) < 0  # pulled together


def test_unicl_loss_trains(tmp_path, tiny_clip_dir, built_data):
    from pathvlm.clip.factory import create_clip

    train_clip(config(tmp_path, tiny_clip_dir, built_data, max_steps=1, loss="unicl"))
    create_clip(str(tmp_path / "run" / "final"))


def test_config_errors(tmp_path):
    from pathvlm.errors import PathVLMError

    (tmp_path / "c.yaml").write_text("epochs: 1\nbogus: 2\n")
    with pytest.raises(PathVLMError, match="unknown field"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("loss: triplet\n")
    with pytest.raises(PathVLMError, match="clip, siglip or unicl"):
        load_config(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml", {"loss": "siglip"}).loss == "siglip"
    (tmp_path / "c.yaml").write_text("oversample: {normal oral mucosa: 1.5}\n")
    with pytest.raises(PathVLMError, match="whole number"):
        load_config(tmp_path / "c.yaml")


def test_oversample_repeats_only_the_named_label():
    from pathvlm.errors import PathVLMError
    from train.clip.data import oversample_rows

    rows = [{"id": str(i), "label": lab} for i, lab in enumerate(["a", "a", "a", "b"])]
    out = oversample_rows(rows, {"b": 3})
    assert [r["label"] for r in out].count("b") == 3 and [r["label"] for r in out].count("a") == 3
    with pytest.raises(PathVLMError, match="do not have: c"):
        oversample_rows(rows, {"c": 2})


def test_oversample_lengthens_the_epoch(tmp_path, tiny_clip_dir, built_data):
    from train.clip.data import read_rows

    labels = sorted({r["label"] for r in read_rows(str(built_data), "train")})
    n = len(read_rows(str(built_data), "train"))
    extra = sum(r["label"] == labels[0] for r in read_rows(str(built_data), "train"))
    result = train_clip(config(tmp_path, tiny_clip_dir, built_data, oversample={labels[0]: 2}, batch_size=2))
    assert extra and result["history"][-1]["step"] == (n + extra) // 2


def test_histology_augmentations_are_seeded_views_of_the_same_tissue():
    import numpy as np
    from PIL import Image

    from pathvlm.errors import PathVLMError
    from train.clip.augment import with_augmentations

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    ident = lambda x: x  # noqa: E731
    assert with_augmentations([], ident) is ident  # no augmentation: the model's transform itself
    flips = with_augmentations(["dihedral"], ident)
    views = set()
    for seed in range(40):
        torch.manual_seed(seed)
        v = np.asarray(flips(img))
        views.add(v.tobytes())
        assert sorted(v.reshape(-1, 3).tolist()) == sorted(np.asarray(img).reshape(-1, 3).tolist())  # same pixels
    assert len(views) == 8  # all eight rotations and reflections (a random image has no symmetry)
    both = with_augmentations(["dihedral", "hed"], ident, hed_sigma=0.05)
    torch.manual_seed(3)
    a = np.asarray(both(img), dtype=float)
    torch.manual_seed(3)
    assert np.array_equal(a, np.asarray(both(img), dtype=float))  # a function of the seed
    torch.manual_seed(4)
    assert not np.array_equal(a, np.asarray(both(img), dtype=float))
    stained = Image.fromarray((np.array([200, 140, 200]) + rng.integers(-30, 30, (24, 32, 3))).astype(np.uint8))
    torch.manual_seed(5)
    same = np.asarray(with_augmentations(["hed"], ident, hed_sigma=0.0)(stained), dtype=float)
    assert np.abs(same - np.asarray(stained, dtype=float)).max() <= 1  # sigma 0: the round trip only
    torch.manual_seed(5)
    moved = np.abs(np.asarray(with_augmentations(["hed"], ident)(stained), dtype=float) - same)
    assert 0.5 < moved.mean() < 20  # an H&E-coloured tile: a stain shift, not a different image
    with pytest.raises(PathVLMError, match="unknown augmentation"):
        with_augmentations(["elastic"], ident)


def test_augment_is_checked_in_the_recipe_and_trains(tmp_path, tiny_clip_dir, built_data):
    from pathvlm.errors import PathVLMError

    (tmp_path / "c.yaml").write_text("augment: [dihedral, blur]\n")
    with pytest.raises(PathVLMError, match="augment must be a list of dihedral, hed"):
        load_config(tmp_path / "c.yaml")
    plain = train_clip(config(tmp_path / "a", tiny_clip_dir, built_data, max_steps=2))
    aug = train_clip(config(tmp_path / "b", tiny_clip_dir, built_data, max_steps=2, augment=["dihedral", "hed"]))
    assert plain["history"][-1]["step"] == aug["history"][-1]["step"] == 2
    a, b = weights(tmp_path / "a" / "run" / "final"), weights(tmp_path / "b" / "run" / "final")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the views differ, so the trained weights do


def test_shipped_recipe_parses():
    cfg = load_config("train/recipes/clip/pathclip_nano.yaml")
    assert cfg.model == "pathclip-nano-untrained" and cfg.lock_text and cfg.eval_unseen_sources == ["histolytics_hgsc"]


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_the_launch_line(tmp_path, tiny_clip_dir, built_data):
    """The documented accelerate launch line, with two CPU processes (gloo): the distributed path
    (sharded batches, gathered contrastive loss, synced gradients) runs and saves a loadable model."""
    import os
    import subprocess
    import sys

    import yaml

    from pathvlm.clip.factory import create_clip

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(dict(model=str(tiny_clip_dir), data=str(built_data), output_dir=str(tmp_path / "run"),
                                       epochs=1, batch_size=2, warmup_steps=1, eval_task="lc25000_colon")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                "train/recipes/accelerate_configs/cpu_ddp.yaml", "--main_process_port", "29577"]
    proc = subprocess.run(launcher + ["-m", "pathvlm", "train", "clip", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _, _ = create_clip(str(tmp_path / "run" / "final"))
    before = load_file(str(tiny_clip_dir / "open_clip_model.safetensors"))
    after = model.state_dict()
    assert not torch.equal(before["text.proj.weight"], after["text.proj.weight"])
