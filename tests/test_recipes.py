"""Every committed training recipe starts from weights that do not change under it.

A recipe that names a trained bundle (``pathclip-nano``, ``pathvlm-nano``) would continue training whatever
bundle the install ships, so the same recipe would give a different model after every release. A recipe
starts from an untrained baseline (``pathclip-nano-untrained``, ``pathvlm-nano-untrained``), from a run
folder of an earlier stage (``init_adapter``), or from an explicit older bundle saved as a folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pathvlm.clip.registry import NAMED_MODELS
from pathvlm.vlm.build import NAMED_REASONERS

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "train" / "recipes").glob("*/*.yaml"))
TRAINING = [p for p in RECIPES if p.parent.name in ("clip", "vlm")]
# names that load a bundle's trained weights: their meaning changes whenever the bundle is retrained
TRAINED_BUNDLES = {n for n, m in NAMED_MODELS.items() if m.trained_weights} | \
                  {n for n, m in NAMED_REASONERS.items() if m.weights}
BASELINES = {n for n, m in NAMED_MODELS.items() if not m.trained_weights} | \
            {n for n, m in NAMED_REASONERS.items() if not m.weights}


def load(path: Path):
    if path.parent.name == "clip":
        from train.clip.config import load_config

        return load_config(path)
    from train.vlm.config import load_config

    return load_config(path)


def start_problem(cfg) -> str | None:
    """Why a recipe's starting point is not reproducible, or None."""
    if cfg.model in TRAINED_BUNDLES:
        return (f"starts from the trained bundle {cfg.model!r}: use its untrained baseline "
                f"({', '.join(sorted(b for b in BASELINES if b.startswith(cfg.model)))}) or an older bundle saved as a folder")
    adapter = getattr(cfg, "init_adapter", None)
    if adapter and Path(adapter).resolve().parent in {ROOT / "pathvlm" / "vlm" / "weights", ROOT / "pathvlm" / "clip" / "weights"}:
        return f"continues the shipped weights file {adapter}: name a run folder of the stage before"
    return None


def test_there_are_recipes_and_bundles():
    assert len(TRAINING) >= 5 and {"pathclip-nano", "pathvlm-nano"} <= TRAINED_BUNDLES
    assert {"pathclip-nano-untrained", "pathvlm-nano-untrained"} <= BASELINES


@pytest.mark.parametrize("path", TRAINING, ids=[f"{p.parent.name}/{p.name}" for p in TRAINING])
def test_recipe_starts_from_an_untrained_baseline_or_a_run(path):
    problem = start_problem(load(path))
    assert problem is None, f"{path.relative_to(ROOT)} {problem}"


def test_the_check_catches_a_recipe_that_continues_a_bundle(tmp_path):
    from train.clip.config import load_config as clip_config
    from train.vlm.config import load_config as vlm_config

    (tmp_path / "c.yaml").write_text("model: pathclip-nano\n")
    assert "pathclip-nano-untrained" in start_problem(clip_config(tmp_path / "c.yaml"))
    (tmp_path / "v.yaml").write_text("stage: sft\nmodel: pathvlm-nano\n")
    assert "pathvlm-nano-untrained" in start_problem(vlm_config(tmp_path / "v.yaml"))
    weights = ROOT / "pathvlm" / "vlm" / "weights" / "pathvlm-nano.safetensors"
    (tmp_path / "a.yaml").write_text(f"stage: grpo\nmodel: pathvlm-nano-untrained\ninit_adapter: {weights}\n")
    assert "shipped weights" in start_problem(vlm_config(tmp_path / "a.yaml"))
    (tmp_path / "ok.yaml").write_text("model: runs/clip/pathclip-nano-v1/final\n")  # an older bundle, as a folder
    assert start_problem(clip_config(tmp_path / "ok.yaml")) is None


def test_moving_names_load_their_pinned_release_and_reasoners_name_pinned_towers():
    """pathclip-nano and pathvlm-nano move to each new release; the pinned names (pathclip-nano-v2, pathvlm-nano-v1)
    never change. A reasoner (trained or a baseline) names a pinned tower, so retraining pathclip-nano cannot change
    the image tower under it (the problem the untrained baselines had before they were pinned)."""
    from pathvlm.clip.registry import RELEASES as CLIP_RELEASES
    from pathvlm.domain import description_path
    from pathvlm.vlm.build import RELEASES as VLM_RELEASES

    for moving, pinned in CLIP_RELEASES.items():
        assert NAMED_MODELS[moving].trained_weights == NAMED_MODELS[pinned].trained_weights
        assert description_path(moving) == description_path(pinned)  # one description per weights file
    for moving, pinned in VLM_RELEASES.items():
        assert NAMED_REASONERS[moving].weights == NAMED_REASONERS[pinned].weights
        assert NAMED_REASONERS[moving].clip == NAMED_REASONERS[pinned].clip
    for name, spec in NAMED_REASONERS.items():
        assert spec.clip in NAMED_MODELS and spec.clip not in CLIP_RELEASES, \
            f"{name} names the moving tower {spec.clip!r}: name its pinned release"
        if spec.weights:  # a trained reasoner names the baseline it was trained from, on the same tower
            base = NAMED_REASONERS[spec.baseline]
            assert base.weights is None and base.clip == spec.clip, name
