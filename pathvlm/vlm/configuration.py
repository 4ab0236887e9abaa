"""PathVLM configuration: the image tower's open_clip architecture, the language model's config, the projector."""
from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


class PathVLMConfig(PretrainedConfig):
    model_type = "pathvlm"
    sub_configs = {"text_config": AutoConfig}
    attribute_map = {"image_token_id": "image_token_index"}  # the name TRL and newer VLMs read

    def __init__(self, vision_config: dict | None = None, text_config=None, image_token_index: int = -1,
                 projector_hidden_act: str = "gelu", image_seq_length: int = 49, **kwargs):
        # vision_config: {"embed_dim": ..., "vision_cfg": open_clip vision cfg, "preprocess_cfg": ...}
        self.vision_config = vision_config or {}
        if isinstance(text_config, dict):
            text_config = AutoConfig.for_model(**text_config)
        self.text_config = text_config
        self.image_token_index = image_token_index
        self.projector_hidden_act = projector_hidden_act
        self.image_seq_length = image_seq_length
        if "tie_word_embeddings" not in kwargs and text_config is not None:
            kwargs["tie_word_embeddings"] = bool(getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)
