"""A label-aware contrastive loss for image-text pairs that also carry a class label.

open_clip's ``ClipLoss`` counts only an image's own caption as its match: two tiles of the same class in one
batch are pushed apart as if they were unrelated. With a handful of classes and a batch of 32 (nano_v2: four
classes), most of each row's "negatives" are the same class. ``UniClLoss`` is UniCL's target (Yang et al.,
"Unified Contrastive Learning in Image-Text-Label Space", CVPR 2022): every pair of the batch whose labels agree
is a positive, every other pair a negative, and the row's softmax is scored against the positives spread
evenly. Rows without a label (caption-only sources: label ``-1``) match only their own caption, as in CLIP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def unicl_targets(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) targets: 1 where row and column share a label (or are the same pair), each row summing to 1."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    same |= torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    t = same.float()
    return t / t.sum(1, keepdim=True)


class UniClLoss(torch.nn.Module):
    """Symmetric cross-entropy of ``scale * image @ text.T`` against :func:`unicl_targets`, gathered across
    processes like ``ClipLoss(local_loss=False, gather_with_grad=True)`` (every process scores the whole batch)."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(self, image_features, text_features, logit_scale, labels):
        if self.world_size > 1:
            import torch.distributed as dist
            from open_clip.loss import gather_features

            image_features, text_features = gather_features(image_features, text_features, local_loss=False,
                                                            gather_with_grad=True, rank=self.rank,
                                                            world_size=self.world_size)
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels)
            labels = torch.cat(gathered)
        logits = logit_scale * image_features @ text_features.T
        targets = unicl_targets(labels.to(logits.device))  # symmetric, so it serves both directions
        loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
        loss_t = -(targets * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        return (loss_i + loss_t) / 2
