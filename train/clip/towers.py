"""Which of PathCLIP's parameters train: tower locking (LiT), locked BatchNorms kept in eval mode, and
LoRA adapters (peft) with a merged copy for export. Used by the trainer and by the per-epoch evaluation."""
from __future__ import annotations

import copy

import torch

from train.clip.config import ClipTrainConfig


def lock_towers(model, cfg: ClipTrainConfig) -> None:
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
    if cfg.lock_text_projection and hasattr(model, "text") and hasattr(model.text, "proj"):
        for p in model.text.proj.parameters():
            p.requires_grad = False
    if cfg.lock_image:
        # requires_grad only: open_clip's freeze_bn_stats swaps in FrozenBatchNorm2d, whose state dict
        # lacks num_batches_tracked, so the export would no longer load; frozen BatchNorms are kept
        # in eval mode by freeze_locked_batchnorm instead.
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=False)


def freeze_locked_batchnorm(module) -> None:
    """BatchNorms whose affine parameters are locked keep their running statistics (eval mode)."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def add_lora(model, cfg: ClipTrainConfig) -> bool:
    """LoRA adapters (peft) on the chosen towers' linear / 1x1 conv layers; returns whether any was added."""
    if not (cfg.lora_image or cfg.lora_text):
        return False
    from peft import LoraConfig, inject_adapter_in_model

    def targets(module, names):
        return sorted({n.split(".")[-1] for n, m in module.named_modules() if n.split(".")[-1] in names})

    if cfg.lora_text:
        t = targets(model.text, {"query", "value", "q_proj", "v_proj", "c_fc", "out_proj"})
        for p in model.text.parameters():
            p.requires_grad = False
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=t), model.text)
    if cfg.lora_image:
        t = targets(model.visual, {"qkv", "proj", "fc1", "fc2", "conv_pw", "conv_pwl"})
        for n, p in model.visual.named_parameters():
            p.requires_grad = n.startswith("head.")  # the projection stays fully trainable
        inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=t), model.visual)
    return True


def merged_copy(model):
    """A copy with LoRA weights merged into their base layers and the adapters removed."""
    from peft.tuners.lora import LoraLayer

    m = copy.deepcopy(model)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
    return m
