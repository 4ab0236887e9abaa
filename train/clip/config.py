"""``pathvlm train clip`` configuration: a dataclass with help text, filled from a YAML recipe."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pathvlm.errors import PathVLMError
from pathvlm.yaml_io import read_yaml_mapping


@dataclass
class ClipTrainConfig:
    model: str = field(default="pathclip-nano", metadata={"help": "any source create_clip loads"})
    text_tower: str | None = field(default=None, metadata={"help": "local copy of the hub repo an open_clip config "
                                                           "names as its HF text tower (BiomedCLIP, QuiltNet-B-16-PMB)"})
    data: str = field(default="runs/data/nano", metadata={"help": "a built recipe folder with clip/ parquet shards"})
    output_dir: str = field(default="runs/clip/pathclip-nano")
    exclude_sources: list = field(default_factory=list, metadata={"help": "sources left out of training "
                                                                  "(kept for the unseen-class evaluation)"})
    loss: str = field(default="clip", metadata={"help": "clip (open_clip ClipLoss), siglip, or unicl (same-label "
                                                 "pairs are positives: train/clip/losses.py)"})
    lock_text: bool = field(default=True, metadata={"help": "freeze the text transformer (its projection trains)"})
    lock_text_unlocked_layers: int = 0
    lock_text_projection: bool = field(default=False, metadata={"help": "LiT: also freeze the text projection, "
                                                                "so the text space stays the text tower's own"})
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lora_image: bool = False
    lora_text: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    epochs: int = 3
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 5e-4
    lr_tower: float = 5e-5  # pretrained (unlocked) tower weights move slower than fresh projections
    weight_decay: float = 0.05
    warmup_steps: int = 20
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPUs that have it), no, bf16, fp16"})
    seed: int = 0
    num_workers: int = 0
    save_every_steps: int = 0  # 0: at the end of each epoch only
    keep_checkpoints: int = 2
    oversample: dict = field(default_factory=dict, metadata={"help": "label -> whole number of times its training "
                             "rows are repeated each epoch (e.g. a class with few tiles); evaluation is unchanged"})
    augment: list = field(default_factory=list, metadata={"help": "histology augmentations of the training views, "
                          "in order: dihedral (the 8 rotations/reflections), hed (stain jitter); none by default"})
    hed_sigma: float = field(default=0.05, metadata={"help": "hed: each stain scaled by 1+a and shifted by b, "
                             "a and b uniform in [-hed_sigma, hed_sigma]"})
    eval_task: str = "lc25000_colon"  # zero-shot prompt set for the held-out split
    eval_split: str = "test"
    eval_unseen_sources: list = field(default_factory=list)  # e.g. the histolytics tiles
    eval_unseen_task: str | None = None
    eval_extra_tasks: list = field(default_factory=list)  # more prompt sets on the held-out split
    cache_text_features: bool = True  # exact when the text transformer is locked
    max_steps: int = 0  # stop early (tests, smoke runs)
    log_every_steps: int = 10


def load_config(path: str | Path, overrides: dict | None = None) -> ClipTrainConfig:
    p = Path(path)
    data = read_yaml_mapping(p, "config")
    data.update(overrides or {})
    known = {f.name: f for f in fields(ClipTrainConfig)}
    unknown = set(data) - set(known)
    if unknown:
        raise PathVLMError(f"{p}: unknown field(s) {', '.join(sorted(unknown))}")
    if data.get("loss", "clip") not in ("clip", "siglip", "unicl"):
        raise PathVLMError(f"{p}: loss must be clip, siglip or unicl")
    for label, factor in (data.get("oversample") or {}).items():
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise PathVLMError(f"{p}: oversample[{label!r}] must be a whole number >= 1, got {factor!r}")
    from train.clip.augment import AUGMENTATIONS

    augment = data.get("augment") or []
    if not isinstance(augment, list) or any(a not in AUGMENTATIONS for a in augment):
        raise PathVLMError(f"{p}: augment must be a list of {', '.join(AUGMENTATIONS)}, got {augment!r}")
    return ClipTrainConfig(**data)
