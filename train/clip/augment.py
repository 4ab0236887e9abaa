"""Histology augmentations for PathCLIP training, applied to the PIL image before the model's own transform.

- ``dihedral``: one of the eight rotations by 90 degrees and reflections, each equally likely. A tile has no up
  or left, so all eight views show the same tissue.
- ``hed``: stain jitter in haematoxylin-eosin-DAB space (``pathvlm.data.stain.hed_jitter``: Ruifrok and
  Johnston's colour deconvolution and its exact inverse, each stain's concentration scaled by a factor in
  ``[1 - sigma, 1 + sigma]`` and shifted by up to ``sigma`` of its spread, after Tellez et al. 2018), which
  imitates differences between labs' staining rather than arbitrary colour changes.

Randomness comes from torch's generator, which ``ClipPairs`` seeds per (seed, epoch, index): the views are
reproducible and a resumed run sees the ones the uninterrupted run would have seen.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from pathvlm.errors import PathVLMError

AUGMENTATIONS = ("dihedral", "hed")
_DIHEDRAL = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
             Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
             Image.Transpose.TRANSVERSE]


def dihedral(img: Image.Image) -> Image.Image:
    op = _DIHEDRAL[int(torch.randint(len(_DIHEDRAL), ()))]
    return img if op is None else img.transpose(op)


def stain(img: Image.Image, sigma: float = 0.05) -> Image.Image:
    from pathvlm.data.stain import hed_jitter as jitter

    rng = np.random.default_rng(int(torch.randint(2**62, ())))
    return Image.fromarray(jitter(np.asarray(img.convert("RGB")), rng, sigma=sigma, bias=sigma))


class HistologyAugment:
    """The named augmentations in order, then ``transform`` (the model's training transform)."""

    def __init__(self, names, transform, hed_sigma: float = 0.05):
        unknown = [n for n in names if n not in AUGMENTATIONS]
        if unknown:
            raise PathVLMError(f"unknown augmentation(s) {', '.join(map(str, unknown))}: choose from "
                               f"{', '.join(AUGMENTATIONS)}")
        if not 0 <= hed_sigma < 1:
            raise PathVLMError(f"hed_sigma must be in [0, 1), got {hed_sigma}")
        self.names, self.transform, self.hed_sigma = list(names), transform, hed_sigma

    def __call__(self, img: Image.Image):
        for name in self.names:
            img = dihedral(img) if name == "dihedral" else stain(img, self.hed_sigma)
        return self.transform(img)

    def __repr__(self):
        return f"HistologyAugment({self.names}, hed_sigma={self.hed_sigma}, then {self.transform!r})"


def with_augmentations(names, transform, hed_sigma: float = 0.05):
    """``transform`` unchanged when no augmentation is named (so existing recipes give the same views)."""
    return HistologyAugment(names, transform, hed_sigma) if names else transform
