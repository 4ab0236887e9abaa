"""pathvlm: open pathology vision-language models.

The public API is imported lazily so that ``import pathvlm`` stays cheap
(the CLI's ``--help`` must not pay for torch).
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "create_clip": "pathvlm.clip.factory",
    "create_image_encoder": "pathvlm.encoders.factory",
    "save_clip": "pathvlm.clip.folder",
    "model_fingerprint": "pathvlm.clip.folder",
    "list_models": "pathvlm.clip.factory",
    "load_image": "pathvlm.images",
    "ZeroShotClassifier": "pathvlm.zeroshot",
    "load_prompt_set": "pathvlm.zeroshot",
    "GalleryIndex": "pathvlm.retrieval.index",
    "PathVLMError": "pathvlm.errors",
    "chat": "pathvlm.chat",
    "load_reasoner": "pathvlm.chat",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pathvlm' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
