"""The image tower in ONNX Runtime: ``pathvlm index build --backend onnx`` (optional: ``pip install onnxruntime onnx``).

The folded, inference-only tower (:class:`pathvlm.fast_encode.FastImageEncoder`) is exported once with
``torch.onnx.export`` (dynamic batch) into ``$PATHVLM_HOME/onnx/<model fingerprint>.onnx`` and run by an ONNX
Runtime CPU session with all graph optimisations and as many intra-op threads as torch uses. At construction
the session's embeddings are checked against the torch tower on a seeded batch: below cosine 0.9999 the backend
is refused with the measured value. ``benchmarks/bench_retrieval.py`` measures its throughput beside torch's.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pathvlm.errors import PathVLMError
from pathvlm.imports import require_package

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnx")
MIN_COSINE = 0.9999


def _export(visual: torch.nn.Module, size: tuple[int, int], path: Path) -> None:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    x = torch.randn(2, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(visual.eval(), (x,), str(tmp), input_names=["pixels"], output_names=["embedding"],
                          dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    tmp.replace(path)


class OnnxImageEncoder:
    """``encode_image(pixels [B, 3, H, W] float32) -> [B, D]`` through ONNX Runtime."""

    def __init__(self, model, cache_dir: str | Path | None = None, threads: int | None = None, check: bool = True):
        require_package("onnxruntime", extra="onnx", pip_name="onnxruntime")
        require_package("onnx", extra="onnx", pip_name="onnx")
        import onnxruntime as ort

        from pathvlm.clip.folder import model_fingerprint
        from pathvlm.fast_encode import FastImageEncoder
        from pathvlm.paths import home

        fast = FastImageEncoder(model)
        visual = fast.visual if fast.visual is not None else getattr(model, "visual", None)
        if not isinstance(visual, torch.nn.Module):
            raise PathVLMError(f"{type(model).__name__}: no image tower to export to ONNX; use --backend torch")
        size = getattr(getattr(model, "visual", None), "image_size", (224, 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        path = Path(cache_dir or home() / "onnx") / f"{model_fingerprint(model)}.onnx"
        if not path.exists():
            _export(visual, size, path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path, self.size = path, size
        self.cosine = None
        if check:
            x = torch.randn(4, 3, *size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                ref = fast.encode_image(x)
            got = self.encode_image(x)
            self.cosine = float(F.cosine_similarity(ref.float(), got, dim=-1).min())
            if self.cosine < MIN_COSINE:
                raise PathVLMError(f"the ONNX image tower disagrees with torch (min cosine {self.cosine:.6f} < "
                                   f"{MIN_COSINE}); use --backend torch")

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().to(torch.float32).contiguous().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {"pixels": x})[0])


_CACHE: dict = {}


def onnx_image_encoder(model, backend: str = "onnx", device="cpu") -> OnnxImageEncoder:
    """The (cached per model and thread count) ONNX Runtime encoder for ``model``."""
    if backend not in BACKENDS:
        raise PathVLMError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if torch.device(device).type != "cpu":
        raise PathVLMError("--backend onnx runs on the CPU; on a GPU use --backend torch")
    key = (id(model), torch.get_num_threads())
    if key not in _CACHE:
        _CACHE[key] = OnnxImageEncoder(model)
    return _CACHE[key]
