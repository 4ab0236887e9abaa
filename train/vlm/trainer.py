"""PathVLM training stages on TRL: ``align`` and ``sft`` (SFTTrainer, assistant-only loss) and ``grpo``
(GRPOTrainer with the reward registry). One CPU, or many GPUs under ``accelerate launch`` with the
DDP, FSDP or DeepSpeed ZeRO-2/3 configs in ``train/recipes/accelerate_configs``.

Every stage writes to ``output_dir``:
- ``checkpoint-N/`` (TRL/transformers checkpoints; a rerun resumes from the last complete one),
- ``adapter.safetensors``: the projector and LoRA factors (the next stage's ``init_adapter``; the
  bundled pathvlm-nano ships this file),
- ``final/``: the merged model and processor (``save_pretrained``; loads with ``--model final``),
- ``results.json`` (settings, losses/rewards, held-out closed-question accuracy) and ``curves.png``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pathvlm.errors import PathVLMError
from train.vlm.config import VLMTrainConfig

CKPT_PREFIX = "checkpoint-"


# -- model -----------------------------------------------------------------------------------------
def lora_config(cfg: VLMTrainConfig, projector: str = "model.multi_modal_projector"):
    """LoRA on the LM's linear layers; the projector (``projector``: its module path) trains fully."""
    from peft import LoraConfig

    targets = "|".join(cfg.lora_targets)
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=rf"^model\.language_model\..*\.({targets})$",
                      modules_to_save=[projector.split(".", 1)[1]] if cfg.train_projector else None)


def prepare_model(cfg: VLMTrainConfig):
    """The starting model with the trainable parts set: projector and/or LoRA on the LM; the image tower is frozen."""
    from pathvlm.vlm.adapters import apply_bundle, projector_prefix
    from pathvlm.vlm.build import load_vlm

    model, processor = load_vlm(cfg.model)
    projector = projector_prefix(model)[:-1]
    if not getattr(processor, "chat_template", None):  # a checkpoint that ships no template: pathvlm's ChatML one
        from pathvlm.vlm.processing import CHAT_TEMPLATE

        processor.chat_template = CHAT_TEMPLATE
    model.train()
    model.requires_grad_(False)
    if not cfg.lora:
        if cfg.init_adapter:
            apply_bundle(model, cfg.init_adapter)
        if not cfg.train_projector:
            raise PathVLMError("nothing to train: set lora: true or train_projector: true")
        model.get_submodule(projector).requires_grad_(True)
        return model, processor
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(cfg, projector))
    if cfg.init_adapter:
        load_adapter_into(peft_model, cfg.init_adapter)
    return peft_model, processor


def load_adapter_into(peft_model, path: str | Path) -> None:
    """Continue from a bundle: its LoRA factors go into the live LoRA layers (same rank and targets), its
    projector into the trainable projector copy."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        scale = float((f.metadata() or {}).get("lora_scale", "1"))
    from pathvlm.vlm.adapters import projector_prefix

    modules = dict(peft_model.named_modules())
    params = dict(peft_model.named_parameters())
    prefix = projector_prefix(peft_model)
    loaded = 0
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("lora.") and key.endswith((".A", ".B")):
                name, part = key[len("lora."):-2], key[-1]
                mod = modules.get(f"base_model.model.{name}")
                if mod is None or not hasattr(mod, "lora_A"):
                    raise PathVLMError(f"{path}: LoRA factors for {name}, but this model has no LoRA layer there "
                                       "(use the same lora_targets)")
                target = (mod.lora_A if part == "A" else mod.lora_B)["default"].weight
                if target.shape != value.shape:
                    raise PathVLMError(f"{path}: LoRA rank differs ({tuple(value.shape)} vs {tuple(target.shape)}); "
                                       "use the previous stage's lora_rank")
                if abs(mod.scaling["default"] - scale) > 1e-9:
                    raise PathVLMError(f"{path}: LoRA scale {scale} differs from this config's "
                                       f"{mod.scaling['default']}; use the same lora_alpha / lora_rank")
                target.copy_(value.to(target.dtype))
                loaded += 1
            elif key.startswith(prefix):
                rest = key[len(prefix):]
                for cand in (f"base_model.model.{prefix}modules_to_save.default.{rest}",
                             f"base_model.model.{prefix}{rest}"):
                    if cand in params:
                        params[cand].copy_(value.to(params[cand].dtype))
                        loaded += 1
                        break
                else:
                    raise PathVLMError(f"{path}: no projector parameter for {key}")
    if loaded == 0:
        raise PathVLMError(f"{path}: no projector or LoRA tensors in this bundle")


def trainable_summary(model) -> dict:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": train}


# -- checkpoints -------------------------------------------------------------------------------------
def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose trainer state was written (it is written last), else None."""
    done = [p for p in folder.glob(f"{CKPT_PREFIX}*") if p.is_dir() and p.name[len(CKPT_PREFIX):].isdigit()
            and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name[len(CKPT_PREFIX):]), default=None)


def adapter_snapshots(cfg: VLMTrainConfig):
    """A callback that writes ``checkpoint-N/adapter.safetensors`` at every save: the projector and LoRA factors,
    fp16, about 12 MB for pathvlm-nano. A run stopped before its end (a time limit, a lost machine) still leaves
    an adapter that ``init_adapter``, ``apply_bundle`` and the evaluation take, small enough to copy off a GPU box."""
    from transformers import TrainerCallback

    from pathvlm.vlm.adapters import export_bundle

    class AdapterSnapshots(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            folder = Path(args.output_dir) / f"{CKPT_PREFIX}{state.global_step}"
            if state.is_world_process_zero and model is not None and folder.is_dir():
                try:
                    export_bundle(model, folder / "adapter.safetensors",
                                  {"stage": cfg.stage, "step": str(state.global_step), "init_adapter": cfg.init_adapter})
                except Exception as e:  # a sharded (FSDP/ZeRO-3) model: the full checkpoint is still there
                    print(f"warning: no adapter snapshot at step {state.global_step} ({type(e).__name__}: {e})")
            return control

    return AdapterSnapshots()


# -- trainer arguments --------------------------------------------------------------------------------
def _precision(cfg: VLMTrainConfig) -> dict:
    use_bf16 = cfg.mixed_precision == "bf16" or (
        cfg.mixed_precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {"bf16": use_bf16, "use_cpu": not torch.cuda.is_available()}


def common_args(cfg: VLMTrainConfig) -> dict:
    return dict(output_dir=cfg.output_dir, per_device_train_batch_size=cfg.batch_size,
                gradient_accumulation_steps=cfg.grad_accum_steps, learning_rate=cfg.lr,
                weight_decay=cfg.weight_decay, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
                lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio, logging_steps=cfg.logging_steps,
                save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
                report_to=[] if cfg.report_to in ("", "none", None) else [cfg.report_to],
                gradient_checkpointing=cfg.gradient_checkpointing, dataloader_num_workers=0,
                remove_unused_columns=False, disable_tqdm=False, **_precision(cfg))


def sft_trainer(cfg: VLMTrainConfig, model, processor, train_ds):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**common_args(cfg), max_length=cfg.max_length, assistant_only_loss=True,
                     dataset_kwargs={"skip_prepare_dataset": True})
    return SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=processor)


def reward_functions(cfg: VLMTrainConfig) -> list:
    from pathvlm.rewards import ImageAgreementReward, get_reward

    funcs = []
    for name in cfg.rewards:
        if name == "image_agreement":
            from pathvlm.clip.factory import create_clip

            funcs.append(ImageAgreementReward(*create_clip(cfg.clip_model)))
        else:
            fn = get_reward(name)
            funcs.append(fn)
    return funcs


def grpo_trainer(cfg: VLMTrainConfig, model, processor, train_ds):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(**common_args(cfg), num_generations=cfg.num_generations,
                      max_completion_length=cfg.max_completion_length, beta=cfg.beta, temperature=cfg.temperature,
                      use_vllm=cfg.use_vllm, reward_weights=cfg.reward_weights or None, log_completions=False)
    return GRPOTrainer(model=model, reward_funcs=reward_functions(cfg), args=args, train_dataset=train_ds,
                       processing_class=processor)


# -- the stage -----------------------------------------------------------------------------------------
def run_stage(cfg: VLMTrainConfig) -> dict:
    from accelerate.utils import set_seed

    from train.vlm import data
    from train.vlm.evaluate import closed_question_accuracy
    from train.vlm.config import validate
    from train.vlm.plots import plot_curves

    validate(cfg)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model, processor = prepare_model(cfg)
    if cfg.stage == "align":
        if cfg.text_data:
            text_pretrain(cfg, model, processor)
        train_ds = data.align_dataset(cfg, cfg.train_split, cfg.max_train_samples)
        trainer = sft_trainer(cfg, model, processor, train_ds)
    elif cfg.stage == "sft":
        train_ds = data.sft_dataset(cfg, cfg.train_split, cfg.max_train_samples)
        trainer = sft_trainer(cfg, model, processor, train_ds)
    else:
        screened, screening = None, {}
        if cfg.screen_prompts:
            from train.vlm.screening import screen_and_pick

            def screened(pool):
                chosen, summary = screen_and_pick(cfg, pool, out)
                screening.update(summary)
                return chosen

        n = cfg.screen_prompts or cfg.max_train_samples
        train_ds = data.grpo_dataset(cfg, cfg.train_split, n, screened=screened)
        trainer = grpo_trainer(cfg, model, processor, train_ds)
    if cfg.lora or cfg.train_projector:
        trainer.add_callback(adapter_snapshots(cfg))
    resume = last_complete_checkpoint(out)
    if resume is not None:
        print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    trained = trainer.model
    if not trainer.is_world_process_zero():
        return {}
    from pathvlm.vlm.adapters import export_bundle
    from train.provenance import git_commit

    info = {"stage": cfg.stage, "start": cfg.model, "init_adapter": cfg.init_adapter, "data": cfg.data}
    adapter = export_bundle(trained, out / "adapter.safetensors", info) if cfg.lora or cfg.train_projector else None
    merged = trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained
    merged.eval()
    final = out / "final"
    merged.save_pretrained(final)
    processor.save_pretrained(final)

    result = {"stage": cfg.stage, "config": asdict(cfg), **trainable_summary(merged),
              "train_samples": len(train_ds), "steps": trainer.state.global_step,
              "train_seconds": time.time() - t0, "log_history": trainer.state.log_history,
              "final": str(final), "adapter": str(adapter) if adapter else None, "commit": git_commit()}
    if cfg.stage == "grpo" and cfg.screen_prompts:
        result["screening"] = screening
    if cfg.eval_samples:
        result["eval"] = closed_question_accuracy(merged, processor, cfg)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    plot_curves(result, out / "curves.png")
    return result


def text_pretrain(cfg: VLMTrainConfig, model, processor) -> None:
    """Continued pretraining of the language model on pathology text, before the image pairs: text-only
    batches through the same model (no pixel values), training LoRA (or, without LoRA, the whole LM)."""
    from trl import SFTConfig, SFTTrainer

    from train.vlm.data import text_dataset

    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not cfg.lora:
        core.model.language_model.requires_grad_(True)
    args = SFTConfig(**{**common_args(cfg), "output_dir": str(Path(cfg.output_dir) / "text")},
                     max_length=cfg.max_length, dataset_text_field="text")
    ds = text_dataset(cfg.text_data, cfg.text_max_samples, cfg.seed)
    SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=processor.tokenizer).train()
    if not cfg.lora:
        core.model.language_model.requires_grad_(False)
