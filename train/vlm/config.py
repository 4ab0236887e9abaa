"""``pathvlm train align|sft|grpo`` configuration: one dataclass, filled from a YAML recipe."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pathvlm.errors import PathVLMError
from pathvlm.yaml_io import read_yaml_mapping

STAGES = ("align", "sft", "grpo")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VLMTrainConfig:
    stage: str = field(default="sft", metadata={"help": "align, sft or grpo"})
    model: str = field(default="pathvlm-nano-untrained", metadata={
        "help": "start from: a bundled reasoner name or a save_pretrained folder (ours or any image-text-to-text model)"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "a previous stage's adapter.safetensors (projector + LoRA factors) to continue from"})
    data: str = field(default="runs/data/nano", metadata={"help": "a built recipe folder (align/, sft/, grpo/ parquet)"})
    train_split: str = "train"
    eval_split: str = "test"
    output_dir: str = "runs/vlm/sft"
    max_train_samples: int = 0  # 0: all; else a seeded subset (CPU runs)
    sources: list = field(default_factory=list)  # keep only these data sources (empty: all)
    tasks: list = field(default_factory=list)  # keep only these row tasks, e.g. [mcq, yes_no]
    abstain_fraction: float = field(default=0.0, metadata={
        "help": "SFT and GRPO: add this fraction of closed-question copies with a blank or noise image whose "
                "answer is 'cannot determine'"})
    # what trains
    train_projector: bool = True
    lora: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list = field(default_factory=lambda: list(LORA_TARGETS))
    # text-only continued pretraining on pathology text (align stage, before the image pairs)
    text_data: str | None = field(default=None, metadata={"help": "a built text/ dataset folder (text_arch_pathgen recipe)"})
    text_max_samples: int = 0
    # optimisation
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum_steps: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_length: int = 512
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on GPUs that have it), no, bf16"})
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 5
    # GRPO
    rewards: list = field(default_factory=lambda: ["accuracy", "format"])
    reward_weights: list = field(default_factory=list)
    num_generations: int = 4
    max_completion_length: int = 96
    beta: float = 0.04  # KL penalty against the starting policy
    temperature: float = 1.0
    use_vllm: bool = False
    clip_model: str = "pathclip-nano-v1"  # for the image_agreement reward (pathvlm-nano's own tower)
    screen_prompts: int = field(default=0, metadata={
        "help": "GRPO: the starting policy answers this many training prompts (greedy) first, and "
                "max_train_samples is filled mostly with the ones it missed (0: no screening)"})
    screen_hard_fraction: float = 0.75  # share of the GRPO prompts taken from the missed ones
    balance_letters: bool = field(default=False, metadata={
        "help": "GRPO: rotate multiple-choice options so the right letters are spread evenly over A-D "
                "(the screened prompts cluster on the letters the policy misses)"})
    counterparts: bool = field(default=False, metadata={
        "help": "GRPO: pair each closed question with its counterpart on the same image whose right answer "
                "differs (yes <-> no, the right option two letters on), so no answer prior pays"})
    # evaluation hook: closed questions on held-out groups (greedy, batched)
    eval_samples: int = 64
    eval_max_new_tokens: int = 96
    eval_batch_size: int = 16
    report_to: str = "tensorboard"


def load_config(path: str | Path, overrides: dict | None = None, stage: str | None = None) -> VLMTrainConfig:
    p = Path(path)
    data = read_yaml_mapping(p, "config")
    data.update(overrides or {})
    known = {f.name for f in fields(VLMTrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise PathVLMError(f"{p}: unknown field(s) {', '.join(sorted(unknown))}")
    cfg = VLMTrainConfig(**data)
    if stage is not None:
        if data.get("stage", stage) != stage:
            raise PathVLMError(f"{p} is a '{data['stage']}' recipe; run it with `pathvlm train {data['stage']}`")
        cfg.stage = stage
    validate(cfg, str(p))
    return cfg


def validate(cfg: VLMTrainConfig, where: str = "config") -> None:
    """The checks every run passes, whether its config came from a recipe or was built in code."""
    if cfg.stage not in STAGES:
        raise PathVLMError(f"{where}: stage must be one of {', '.join(STAGES)}")
    if cfg.mixed_precision not in ("auto", "no", "bf16"):
        raise PathVLMError(f"{where}: mixed_precision must be auto, no or bf16")
    if not 0 <= cfg.screen_hard_fraction <= 1:
        raise PathVLMError(f"{where}: screen_hard_fraction must be between 0 and 1")
    if cfg.screen_prompts and not cfg.max_train_samples:
        raise PathVLMError(f"{where}: screen_prompts needs max_train_samples (how many screened prompts to train on)")
    if cfg.stage == "grpo" and cfg.num_generations < 2:
        raise PathVLMError(f"{where}: GRPO needs num_generations >= 2 (advantages compare completions of one prompt)")
    if cfg.stage == "grpo" and cfg.batch_size % cfg.num_generations:
        raise PathVLMError(f"{where}: batch_size ({cfg.batch_size}) must be a multiple of num_generations "
                           f"({cfg.num_generations}): each step holds whole groups")
