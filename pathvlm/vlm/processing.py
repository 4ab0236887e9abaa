"""PathVLM processor: PathCLIP's image preprocessing + the LM's tokenizer + a ChatML chat template.

Built on transformers' ``ProcessorMixin``: each ``<image>`` in the text expands to
``image_seq_length`` image tokens, ``apply_chat_template`` places images from the messages, and the
template marks assistant turns with ``{% generation %}`` so TRL's assistant-only loss works.
"""
from __future__ import annotations

from transformers import CLIPImageProcessor, ProcessorMixin

IMAGE_TOKEN = "<image>"

# ChatML (SmolLM2, Qwen): an image part becomes "<image>\n" before the text of its turn.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}{%- generation -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>' -}}{%- endgeneration -%}{{- '\n' -}}"
    "{%- else -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


class PathVLMProcessor(ProcessorMixin):
    """``processor(images=..., text=...)`` -> ``input_ids``, ``attention_mask``, ``pixel_values``."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length: int = 49,
                 image_token: str = IMAGE_TOKEN, **kwargs):
        self.image_token = image_token
        self.image_seq_length = image_seq_length
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.image_seq_length


def image_processor_for(preprocess_cfg: dict, image_size: int) -> CLIPImageProcessor:
    """A transformers image processor matching open_clip's eval transform (resize shortest side, centre crop)."""
    size = preprocess_cfg.get("size") or image_size
    size = size if isinstance(size, int) else int(size[0])
    mean = list(preprocess_cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = list(preprocess_cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=mean, image_std=std, do_convert_rgb=True, resample=3)


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` (and a pad token if missing) to the tokenizer; return the image token id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
