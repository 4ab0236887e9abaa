"""Inference-only image encoder: the same weights, laid out for CPU speed.

Two exact rewrites of ``model.visual`` (on a copy; the model itself is untouched):

- every Conv2d directly followed by a BatchNorm2d (timm's BatchNormAct2d included) is folded
  into one convolution with a bias: ``w' = w * g / sqrt(v + eps)``, ``b' = b0 + (b - m) * g / sqrt(v + eps)``;
  the BatchNorm's activation stays. One memory pass per layer instead of two.
- channels-last memory format, which oneDNN's depthwise and 1x1 convolutions prefer.

The rewrite is checked against the original on a random batch at construction; if it disagrees
(by more than float32 rounding), the original tower is used. On this CPU, EfficientNet throughput
drops with batch size past ~8 (activations leave the cache), hence the small default CPU batch.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU_BATCH = 8
GPU_BATCH = 128


def default_batch_size(device) -> int:
    return GPU_BATCH if torch.device(device).type != "cpu" else CPU_BATCH


def fold_conv_bn(module: nn.Module) -> int:
    """Fold Conv2d+BatchNorm2d sibling pairs in place (eval mode only); returns how many were folded."""
    folded = 0
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (name_a, conv), (name_b, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if not bn.track_running_stats or bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(shift + (conv.bias * scale if conv.bias is not None else 0))
            fused.to(conv.weight.device, conv.weight.dtype)
            # keep the conv's own forward (timm's Conv2dSame pads in forward): swap weights only
            if type(conv) is not nn.Conv2d:
                conv = copy.deepcopy(conv)
                conv.weight = fused.weight
                conv.bias = fused.bias
                fused = conv
            setattr(parent, name_a, fused)
            setattr(parent, name_b, _after_bn(bn))
            folded += 1
    return folded


def has_conv_bn(module: nn.Module) -> bool:
    """Whether any Conv2d is directly followed by a BatchNorm2d (what :func:`fold_conv_bn` folds)."""
    for parent in module.modules():
        children = list(parent.children())
        if any(isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) for a, b in zip(children, children[1:])):
            return True
    return False


def _is_open_clip(model) -> bool:
    try:
        import open_clip
    except ImportError:
        return False
    return isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP))


def _after_bn(bn: nn.BatchNorm2d) -> nn.Module:
    """What remains of a BatchNorm once its affine part is folded: timm's drop + activation, or nothing."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


class FastImageEncoder(nn.Module):
    """``encode_image`` for inference: folded BatchNorm, channels-last, checked against the original."""

    def __init__(self, model, check: bool = True, atol: float = 1e-4, precision: str = "fp32"):
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.model = model
        self.precision = precision
        visual = getattr(model, "visual", None)
        self.visual = None
        # only where encode_image is visual(x) (open_clip's CLIP) and there is something to fold:
        # copying a ViT tower (no BatchNorm) would double a billion-parameter model's memory for nothing
        if isinstance(visual, nn.Module) and _is_open_clip(model) and has_conv_bn(visual):
            fast = copy.deepcopy(visual).eval()
            n = fold_conv_bn(fast)
            if n:
                fast = fast.to(memory_format=torch.channels_last)
                if not check or self._agrees(visual, fast, atol):
                    self.visual = fast
                else:
                    log.warning("folded image tower disagrees with the original; using the original")

    @staticmethod
    def _agrees(ref: nn.Module, fast: nn.Module, atol: float) -> bool:
        p = next(ref.parameters())
        size = getattr(ref, "image_size", (224, 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
        with torch.inference_mode():
            a, b = ref.eval()(x), fast(x.contiguous(memory_format=torch.channels_last))
        return bool(torch.allclose(a.float(), b.float(), atol=atol, rtol=1e-3))

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        # bf16 autocast trades ~1e-2 relative error in the embedding for speed on CPUs with
        # AVX512-BF16/AMX and on GPUs; fp32 (the default) matches the model to float rounding.
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            if self.visual is None:
                out = self.model.encode_image(pixels)
            else:
                out = self.visual(pixels.contiguous(memory_format=torch.channels_last))
        return out.float()
