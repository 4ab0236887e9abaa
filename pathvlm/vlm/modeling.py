"""PathVLM model: image patch features from the PathCLIP trunk -> MLP projector -> the LM's input
embeddings at the ``<image>`` token positions -> the causal LM (generation, KV cache, loss)."""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.activations import ACT2FN

from pathvlm.vlm.configuration import PathVLMConfig


def build_vision_tower(vision_config: dict) -> nn.Module:
    """The open_clip image tower described by ``vision_config`` (random init; weights come from a checkpoint)."""
    from open_clip.model import _build_vision_tower

    vcfg = dict(vision_config["vision_cfg"])
    if "timm_model_name" in vcfg:
        vcfg["timm_model_pretrained"] = False
    tower = _build_vision_tower(vision_config["embed_dim"], vcfg)
    tower.preprocess_cfg = vision_config.get("preprocess_cfg", {})
    return tower


def patch_features(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, tokens, channels]: the trunk's last feature map, one token per position."""
    trunk = getattr(tower, "trunk", None)
    if trunk is None or not hasattr(trunk, "forward_features"):
        raise NotImplementedError("PathVLM currently takes timm image towers (open_clip TimmModel)")
    fmap = trunk.forward_features(pixel_values)
    return fmap.flatten(2).transpose(1, 2) if fmap.ndim == 4 else fmap


class PathVLMProjector(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class PathVLMPreTrainedModel(PreTrainedModel):
    config_class = PathVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module):  # sub-models initialise themselves; keep copied weights untouched
        pass


class PathVLMModel(PathVLMPreTrainedModel):
    """The backbone: image tower + projector + the LM's decoder (no head); returns hidden states."""

    def __init__(self, config: PathVLMConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        with torch.no_grad():
            size = self.vision_tower.preprocess_cfg.get("size") or config.vision_config["vision_cfg"].get("image_size", 224)
            size = (size, size) if isinstance(size, int) else tuple(size)
            self.vision_dim = patch_features(self.vision_tower.eval(), torch.zeros(1, 3, *size)).shape[-1]
        self.language_model = AutoModel.from_config(config.text_config)
        self.multi_modal_projector = PathVLMProjector(self.vision_dim, config.text_config.hidden_size,
                                                      config.projector_hidden_act)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def train(self, mode: bool = True):
        """A frozen image tower stays in eval mode (its BatchNorm statistics must not drift while the rest trains)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.vision_tower.parameters()):
            self.vision_tower.eval()
        return self

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = patch_features(self.vision_tower, pixel_values.to(next(self.vision_tower.parameters()).dtype))
        return self.multi_modal_projector(feats.to(self.multi_modal_projector.linear_1.weight.dtype))

    def merge_image_embeddings(self, input_ids, inputs_embeds, pixel_values):
        mask = input_ids == self.config.image_token_index
        n_tokens = int(mask.sum())
        if n_tokens == 0:
            return inputs_embeds
        images = self.image_embeddings(pixel_values)  # [B_img, T, H]
        if images.shape[0] * images.shape[1] != n_tokens:
            raise ValueError(f"the prompt has {n_tokens} <image> tokens but the images give "
                             f"{images.shape[0]} x {images.shape[1]} embeddings")
        out = inputs_embeds.clone()
        out[mask] = images.reshape(-1, images.shape[-1]).to(out.dtype)
        return out

    def prompt_embeddings(self, input_ids, pixel_values=None):
        """Token embeddings with the image embeddings in place of the ``<image>`` tokens."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            inputs_embeds = self.merge_image_embeddings(input_ids, inputs_embeds, pixel_values)
        return inputs_embeds

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.prompt_embeddings(input_ids, pixel_values)
        # the KV cache (``cache``) and use_cache pass through in kwargs unchanged
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, **kwargs)


class PathVLMForConditionalGeneration(PathVLMPreTrainedModel, GenerationMixin):
    """Image-text-to-text in the layout transformers' own VLMs use (``model`` backbone + ``lm_head``)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: PathVLMConfig):
        super().__init__(config)
        self.model = PathVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # the parts, by their usual names
    @property
    def vision_tower(self):
        return self.model.vision_tower

    @property
    def multi_modal_projector(self):
        return self.model.multi_modal_projector

    @property
    def language_model(self):
        return self.model.language_model

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new):
        self.lm_head = new

    def image_embeddings(self, pixel_values):
        return self.model.image_embeddings(pixel_values)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                inputs_embeds=None, labels=None, logits_to_keep=0, **kwargs):
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_index, -100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=getattr(outputs, "cache", None),
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, attention_mask=None, cache_position=None,
                                      **kwargs):
        inputs = super().prepare_inputs_for_generation(input_ids, attention_mask=attention_mask,
                                                       cache_position=cache_position, **kwargs)
        first_step = cache_position is None or int(cache_position[0]) == 0
        inputs["pixel_values"] = pixel_values if first_step else None  # the image enters once; then the KV cache
        return inputs

    @classmethod
    def from_components(cls, clip_model, language_model, image_token_index: int, image_seq_length: int | None = None):
        """Assemble from a PathCLIP model (its image tower's weights copied exactly) and a causal LM."""
        vision_config = {"embed_dim": clip_model.pathvlm_cfg["model_cfg"]["embed_dim"],
                         "vision_cfg": clip_model.pathvlm_cfg["model_cfg"]["vision_cfg"],
                         "preprocess_cfg": dict(clip_model.visual.preprocess_cfg)}
        text_cfg = language_model.config.to_dict()
        config = PathVLMConfig(vision_config=vision_config, text_config=text_cfg, image_token_index=image_token_index,
                               tie_word_embeddings=bool(text_cfg.get("tie_word_embeddings", False)))
        model = cls(config)
        model.model.vision_tower.load_state_dict(clip_model.visual.state_dict())
        model.model.language_model.load_state_dict(language_model.base_model.state_dict())
        model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
        if config.tie_word_embeddings:
            model.tie_weights()
        with torch.no_grad():
            size = model.vision_tower.preprocess_cfg.get("size", 224)
            size = (size, size) if isinstance(size, int) else tuple(size)
            model.config.image_seq_length = image_seq_length or patch_features(
                model.vision_tower.eval(), torch.zeros(1, 3, *size)).shape[1]
        return model
