"""Image preprocessing split in two for gallery indexing: the per-image part in the loader, the arithmetic batched.

open_clip's (and most CLIP) transforms end in ``ToTensor`` + ``Normalize``. Done per image, they allocate a float
tensor of 3x224x224 per tile in the loader, send it between processes at four bytes a value and walk it twice.
:func:`split_preprocess` recognises a ``Compose`` of PIL steps followed by ``ToTensor`` and ``Normalize`` and
returns a :class:`SplitPreprocess`: the loader runs the PIL steps and hands back the uint8 pixels (HWC, a quarter
of the bytes), and ``finish`` turns a whole batch into normalised float32 in one pass, already in the
channels-last layout the folded image tower wants. The arithmetic is ToTensor's and Normalize's, in their order
(``x / 255``, ``- mean``, ``/ std``), so the result is bitwise equal to the original transform (tested).
Anything else (another transform, a custom callable) keeps the original per-image path (``None``).
"""
from __future__ import annotations

import numpy as np
import torch


class SplitPreprocess:
    def __init__(self, pil_steps, mean, std):
        self.pil_steps = list(pil_steps)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, image) -> torch.Tensor:
        """The loader's half: PIL steps, then uint8 pixels [H, W, C]."""
        for step in self.pil_steps:
            image = step(image)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())

    def finish(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, C] -> normalised float32 [B, C, H, W] (channels-last memory)."""
        x = batch.permute(0, 3, 1, 2).to(torch.float32).div_(255)
        return x.sub_(self.mean).div_(self.std)


def split_preprocess(preprocess) -> SplitPreprocess | None:
    """A :class:`SplitPreprocess` equal to ``preprocess``, or None when its shape is not recognised."""
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(steps, (list, tuple)) or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or type(normalize).__name__ != "Normalize":
        return None
    if getattr(normalize, "inplace", False) is not False:
        return None
    allowed = {"Resize", "CenterCrop", "MaybeConvertMode", "ResizeKeepRatio", "CenterCropOrPad"}
    if not all(type(s).__name__ in allowed for s in steps[:-2]):
        return None
    mean, std = list(normalize.mean), list(normalize.std)
    return SplitPreprocess(list(steps[:-2]) + [_rgb], mean, std)


def _rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")
