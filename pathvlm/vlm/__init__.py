"""PathVLM: a PathCLIP image tower, an MLP projector and any causal LM, as a transformers model.

Importing this package registers ``model_type="pathvlm"`` with transformers' Auto classes, so
``AutoModelForImageTextToText.from_pretrained(folder)`` loads a saved PathVLM (no remote code).
"""
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from pathvlm.vlm.configuration import PathVLMConfig
from pathvlm.vlm.modeling import PathVLMForConditionalGeneration
from pathvlm.vlm.processing import PathVLMProcessor

AutoConfig.register("pathvlm", PathVLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(PathVLMConfig, PathVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(PathVLMConfig, PathVLMProcessor, exist_ok=True)

__all__ = ["PathVLMConfig", "PathVLMForConditionalGeneration", "PathVLMProcessor"]
