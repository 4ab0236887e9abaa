"""The processor of a converted original-format LLaVA: LLaVA's own tokenisation around ``<image>``.

transformers' ``LlavaProcessor`` tokenises the whole prompt at once. LLaVA (``llava.mm_utils.tokenizer_image_token``)
tokenises the text on each side of ``<image>`` separately, keeps the BOS of the first piece only and puts the
image between them, so each piece after an image starts with the tokenizer's prefix space (``▁``): the ids
differ from whole-prompt tokenisation (four more tokens on a LLaVA-1.5 prompt with one image). The model was
trained on LLaVA's ids, so :class:`LlavaOriginalProcessor` reproduces them exactly (checked against the
reference code in ``tests/test_llava_original.py``) and then expands the image to the
``image_seq_length`` placeholder tokens transformers' ``LlavaForConditionalGeneration`` fills with image
features. Everything else (image processing with pad-to-square, padding, offsets for assistant masks, chat
template) behaves like ``LlavaProcessor``, and ``save_pretrained`` writes a plain ``LlavaProcessor`` folder plus
``pathvlm_llava.json``, which tells :func:`pathvlm.vlm.build.load_vlm` to use this class again.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import BatchFeature, LlavaProcessor

SIDECAR = "pathvlm_llava.json"


class LlavaOriginalProcessor(LlavaProcessor):
    """``LlavaProcessor`` with LLaVA's chunked tokenisation (see the module docstring)."""

    llava_info: dict = {}

    @classmethod
    def from_processor(cls, processor: LlavaProcessor, info: dict) -> "LlavaOriginalProcessor":
        out = cls(image_processor=pil_image_processor(processor.image_processor), tokenizer=processor.tokenizer,
                  patch_size=processor.patch_size, vision_feature_select_strategy=processor.vision_feature_select_strategy,
                  chat_template=processor.chat_template, image_token=processor.image_token,
                  num_additional_image_tokens=processor.num_additional_image_tokens)
        out.llava_info = dict(info)
        return out

    # -- sizes
    @property
    def image_seq_length(self) -> int:
        crop = self.image_processor.crop_size
        side = crop["height"] if isinstance(crop, dict) else getattr(crop, "height", crop)
        n = (int(side) // self.patch_size) ** 2 + self.num_additional_image_tokens
        return n - 1 if self.vision_feature_select_strategy == "default" else n

    # -- tokenisation
    def _llava_ids(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``tokenizer_image_token``: ids and character offsets (in ``text``) of one prompt."""
        tok = self.tokenizer
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        pos = 0
        pieces = text.split(self.image_token)
        for i, piece in enumerate(pieces):
            enc = tok(piece, add_special_tokens=True, return_offsets_mapping=True)
            piece_ids, piece_offsets = enc["input_ids"], enc["offset_mapping"]
            has_bos = bool(piece_ids) and tok.bos_token_id is not None and piece_ids[0] == tok.bos_token_id
            if i == 0 and has_bos:
                ids.append(piece_ids[0])
                offsets.append((0, 0))
            skip = 1 if has_bos else 0
            ids.extend(piece_ids[skip:])
            offsets.extend((pos + a, pos + b) if b > a else (pos + a, pos + a) for a, b in piece_offsets[skip:])
            pos += len(piece)
            if i < len(pieces) - 1:
                ids.extend([self.image_token_id] * self.image_seq_length)
                offsets.extend([(pos, pos + len(self.image_token))] * self.image_seq_length)
                pos += len(self.image_token)
        return ids, offsets

    def count_prompt_tokens(self, text: str) -> int:
        """Prompt length in tokens, image tokens included (no image processing needed)."""
        return len(self._llava_ids(text)[0])

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("LlavaOriginalProcessor needs text")
        texts = [text] if isinstance(text, str) else list(text)
        n_markers = sum(t.count(self.image_token) for t in texts)
        data = {}
        if images is not None:
            flat = images
            while isinstance(flat, (list, tuple)) and flat and isinstance(flat[0], (list, tuple)):
                flat = [im for sub in flat for im in sub]
            flat = flat if isinstance(flat, (list, tuple)) else [flat]
            if len(flat) != n_markers:
                raise ValueError(f"{len(flat)} image(s) for {n_markers} {self.image_token} marker(s) in the text")
            if flat:
                data.update(self.image_processor(flat, return_tensors="pt"))
        elif n_markers:
            raise ValueError(f"the text has {n_markers} {self.image_token} marker(s) but no image was given")
        rows = [self._llava_ids(t) for t in texts]
        max_length = kwargs.get("max_length")
        if kwargs.get("truncation") and max_length:
            rows = [(ids[:max_length], offs[:max_length]) for ids, offs in rows]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        side = kwargs.get("padding_side") or self.tokenizer.padding_side
        width = max(len(ids) for ids, _ in rows)
        multiple = kwargs.get("pad_to_multiple_of")
        if multiple:
            width = -(-width // multiple) * multiple
        padding = kwargs.get("padding", False)
        if not padding and len({len(ids) for ids, _ in rows}) > 1 and kwargs.get("return_tensors"):
            raise ValueError("prompts of different lengths need padding=True")
        input_ids, masks, offsets = [], [], []
        for ids, offs in rows:
            gap = width - len(ids) if padding or multiple else 0
            pad, pad_offs = [pad_id] * gap, [(0, 0)] * gap
            input_ids.append(pad + ids if side == "left" else ids + pad)
            masks.append([0] * gap + [1] * len(ids) if side == "left" else [1] * len(ids) + [0] * gap)
            offsets.append(pad_offs + offs if side == "left" else offs + pad_offs)
        data["input_ids"], data["attention_mask"] = input_ids, masks
        if kwargs.get("return_offsets_mapping"):
            data["offset_mapping"] = offsets
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    # -- saving: a plain LlavaProcessor folder plus the sidecar
    def to_dict(self) -> dict:
        out = super().to_dict()
        out["processor_class"] = "LlavaProcessor"
        return out

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        Path(save_directory, SIDECAR).write_text(json.dumps(self.llava_info, indent=2))
        return result


def pil_image_processor(image_processor):
    """The PIL backend of LLaVA's image processor: the same resize and pad as LLaVA's ``CLIPImageProcessor`` +
    ``expand2square`` (identical pixels). transformers 5 loads the torchvision backend by default, whose
    antialiased resize differs by up to 0.015 after normalisation."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    if isinstance(image_processor, LlavaImageProcessorPil):
        return image_processor
    settings = {k: v for k, v in image_processor.to_dict().items()
                if k not in ("image_processor_type", "processor_class", "_processor_class")}
    return LlavaImageProcessorPil(**settings)


def read_sidecar(folder: str | Path) -> dict | None:
    path = Path(folder) / SIDECAR
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None
