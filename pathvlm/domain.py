"""A bundled model's training domain, and a check that says when an image lies outside it.

A :class:`DomainDescription` is a few kilobytes of statistics of a PathCLIP model's normalised
image embeddings over its training split: the class means, and a Ledoit-Wolf shrunk pooled
within-class covariance kept as its top-``k`` principal directions plus one isotropic variance
for the rest. An image's score is its distance to the nearest class mean under that covariance
(Mahalanobis in the top directions, Euclidean over the residual variance elsewhere); it is *in
domain* when the score is at most a threshold calibrated on held-out in-domain tiles: the ``target``
quantile of their scores, or (bundled models) a group-bootstrap bound that passes ``target`` of the tiles
of new groups with a stated confidence (:meth:`DomainDescription.calibrate`).

The description is stored beside the weights it describes
(``pathvlm/clip/weights/<weights stem>.domain.safetensors`` for a bundled model, ``domain.safetensors``
in a pathvlm model folder), with the sha256 of those weights in its metadata. When the weights no
longer match, the description is stale: it is ignored with a warning, and no image is flagged.
Models without a description (a user's own folder without one, a hub model,
``pathclip-nano-untrained``) are never flagged: their checks say ``checked: false``.

Built by ``python -m train.clip.domain`` (see docs/training.md#domain-description).
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pathvlm.errors import PathVLMError
from pathvlm.paths import sha256_file  # noqa: F401 (re-exported: the builder and tests tie descriptions to weights)

log = logging.getLogger(__name__)

SUFFIX = ".domain.safetensors"
FORMAT = "pathvlm-domain-v1"


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance of centred rows ``x`` (n, d): ``(cov, shrinkage)``.

    ``(1 - a) S + a mu I`` with ``S = x'x / n``, ``mu = tr(S) / d`` and the shrinkage ``a`` that
    minimises the expected Frobenius loss (Ledoit and Wolf 2004; sklearn's estimator)."""
    x = x.double()
    n, d = x.shape
    s = x.T @ x / n
    mu = torch.trace(s) / d
    delta = ((s - mu * torch.eye(d, dtype=s.dtype)) ** 2).sum() / d
    beta = (((x ** 2).sum(1) ** 2).sum() / n - (s ** 2).sum()) / (n * d)
    beta = torch.clamp(beta, min=0.0)
    a = float(min(beta, delta) / delta) if delta > 0 else 1.0
    return (1 - a) * s + a * mu * torch.eye(d, dtype=s.dtype), a


def group_bootstrap_threshold(scores: torch.Tensor, groups: list, target: float, confidence: float,
                              resamples: int = 2000, seed: int = 0) -> float:
    """The ``confidence`` quantile, over ``resamples`` copies of the data drawn by whole groups with
    replacement, of the smallest threshold that passes ``target`` of each copy's scores."""
    if resamples < 1:
        raise PathVLMError(f"resamples must be at least 1, got {resamples}")
    names = sorted(set(groups), key=str)
    index = {g: i for i, g in enumerate(names)}
    member = torch.tensor([index[g] for g in groups])
    per_group = [scores[member == i] for i in range(len(names))]
    gen = torch.Generator().manual_seed(seed)
    bounds = torch.empty(resamples, dtype=torch.float64)
    for b in range(resamples):
        draw = torch.randint(len(names), (len(names),), generator=gen)
        copy = torch.cat([per_group[i] for i in draw.tolist()])
        bounds[b] = torch.quantile(copy, target, interpolation="higher")
    return float(torch.quantile(bounds, confidence, interpolation="higher"))


@dataclass
class DomainDescription:
    """Class means, a shrunk pooled covariance (top directions + residual variance) and a threshold."""

    model: str
    classes: list[str]
    means: torch.Tensor  # (C, D) class means of normalised embeddings
    basis: torch.Tensor  # (D, K) top principal directions of the pooled within-class covariance
    variances: torch.Tensor  # (K,) its variances along them
    residual_variance: float  # mean variance of the other D - K directions
    threshold: float = float("inf")  # scores at most this are in domain
    domain: str = ""  # plain words: "colon H&E tiles (adenocarcinoma, benign)"
    weights_sha256: str = ""  # of the weights file it describes ("" when not tied to a file)
    info: dict = field(default_factory=dict)  # how it was built and calibrated (counts, pass rates, commands)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, features: torch.Tensor, labels: list[str], model: str, domain: str = "", k: int = 16,
            weights_sha256: str = "") -> "DomainDescription":
        """Statistics of ``features`` (N, D), normalised image embeddings of the training split, by ``labels``."""
        features = torch.as_tensor(features).float()
        if features.ndim != 2 or len(labels) != features.shape[0]:
            raise PathVLMError(f"fit needs (N, D) features and N labels, got {tuple(features.shape)} and {len(labels)}")
        classes = sorted(set(labels))
        if features.shape[0] < len(classes) + 2:
            raise PathVLMError(f"too few images ({features.shape[0]}) to describe a domain")
        idx = torch.tensor([classes.index(y) for y in labels])
        means = torch.stack([features[idx == c].mean(0) for c in range(len(classes))])
        centred = features - means[idx]
        cov, shrinkage = ledoit_wolf(centred)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0).clamp(min=1e-12), evecs.flip(1)
        k = max(1, min(int(k), features.shape[1] - 1))
        return cls(model=model, classes=classes, means=means, basis=evecs[:, :k].float().contiguous(),
                   variances=evals[:k].float(), residual_variance=float(evals[k:].mean()), domain=domain,
                   weights_sha256=weights_sha256,
                   info={"n_fit": int(features.shape[0]), "k": k, "shrinkage": round(shrinkage, 6),
                         "per_class": {c: int((idx == i).sum()) for i, c in enumerate(classes)}})

    def calibrate(self, features: torch.Tensor, target: float = 0.97, groups: list | None = None,
                  confidence: float | None = None, resamples: int = 2000, seed: int = 0) -> float:
        """Set the threshold so that a ``target`` share of ``features`` (held-out in-domain tiles) pass.

        With ``groups`` (one leakage group per row) and ``confidence``, the threshold is instead the smallest
        score at which, in a ``confidence`` share of ``resamples`` group-bootstrap copies of the held-out set
        (whole groups drawn with replacement), at least ``target`` of the tiles pass. Tiles of one group
        (one slide, one source image) move together, so a few dozen groups are a few dozen samples, not
        hundreds, and the plain quantile of a small held-out set passes fewer than ``target`` of new groups'
        tiles about half the time. The bootstrap threshold is a one-sided ``confidence`` bound for that pass
        rate on groups drawn like the held-out ones; it cannot see groups unlike all of them."""
        if not 0 < target <= 1:
            raise PathVLMError(f"calibration target must be in (0, 1], got {target}")
        s = self.scores(features).double()
        if s.numel() == 0:
            raise PathVLMError("no held-out images to calibrate the threshold on")
        info = {"n_calibration": int(s.numel()), "target": target}
        if confidence is None:
            self.threshold = float(torch.quantile(s, target, interpolation="higher"))  # >= target pass
        else:
            if not 0 < confidence < 1:
                raise PathVLMError(f"calibration confidence must be in (0, 1), got {confidence}")
            if groups is None or len(groups) != s.numel():
                raise PathVLMError(f"a confidence bound needs one group per held-out image "
                                   f"({s.numel()} images, {0 if groups is None else len(groups)} groups)")
            self.threshold = group_bootstrap_threshold(s, groups, target, confidence, resamples, seed)
            info.update({"confidence": confidence, "resamples": resamples, "n_groups": len(set(groups)),
                         "method": "group bootstrap"})
        info["calibration_pass_rate"] = float((s <= self.threshold).float().mean())
        self.info.update(info)
        return self.threshold

    # ------------------------------------------------------------------ scoring
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-class distance of each row of ``features`` (N, D); larger is further from the domain."""
        x = torch.as_tensor(features).float()
        if x.ndim == 1:
            x = x[None]
        if x.shape[-1] != self.means.shape[1]:
            raise PathVLMError(f"the domain description of {self.model} is for {self.means.shape[1]}-d embeddings; "
                               f"these are {x.shape[-1]}-d")
        diff = x[:, None, :] - self.means[None]  # (N, C, D)
        proj = diff @ self.basis  # (N, C, K)
        resid = (diff ** 2).sum(-1) - (proj ** 2).sum(-1)
        d2 = (proj ** 2 / self.variances).sum(-1) + resid.clamp(min=0) / self.residual_variance
        return d2.min(1).values.sqrt()

    def nearest(self, features: torch.Tensor) -> list[str]:
        x = torch.as_tensor(features).float().reshape(-1, self.means.shape[1])
        return [self.classes[i] for i in torch.cdist(x, self.means).argmin(1).tolist()]

    def message(self) -> str:
        """The plain line shown when an image is outside the domain."""
        what = self.domain or "its training tiles"
        return f"{self.model} was trained on {what}; this one looks unlike them, so treat the answer as unreliable."

    def verdicts(self, features: torch.Tensor) -> list[dict]:
        """One JSON-ready verdict per row of ``features`` (see :func:`unchecked` for models without a description)."""
        s = self.scores(features)
        out = []
        for score, near in zip(s.tolist(), self.nearest(features)):
            ok = score <= self.threshold
            out.append({"checked": True, "in_domain": ok, "model": self.model, "trained_on": self.domain,
                        "score": round(score, 4), "threshold": round(self.threshold, 4), "nearest_class": near,
                        "warning": None if ok else self.message()})
        return out

    # ------------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": FORMAT, "model": self.model, "classes": json.dumps(self.classes), "domain": self.domain,
                "threshold": repr(self.threshold), "residual_variance": repr(self.residual_variance),
                "weights_sha256": self.weights_sha256, "info": json.dumps(self.info, sort_keys=True)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"means": self.means.float().contiguous(), "basis": self.basis.float().contiguous(),
                   "variances": self.variances.float().contiguous()}, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DomainDescription":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PathVLMError(f"{path}: no such domain description")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in ("means", "basis", "variances")}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
            return cls(model=meta["model"], classes=json.loads(meta["classes"]), domain=meta.get("domain", ""),
                       threshold=float(meta["threshold"]), residual_variance=float(meta["residual_variance"]),
                       weights_sha256=meta.get("weights_sha256", ""), info=json.loads(meta.get("info", "{}")),
                       **tensors)
        except Exception as e:  # a damaged or foreign file: say which, never a traceback
            raise PathVLMError(f"{path} is not a pathvlm domain description ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------- where descriptions live
FOLDER_FILE = "domain.safetensors"  # in a pathvlm PathCLIP folder, beside open_clip_model.safetensors
FOLDER_WEIGHTS = "open_clip_model.safetensors"


def _folder(source) -> Path | None:
    if not isinstance(source, (str, Path)):
        return None
    text = str(source)
    text = text[len("local-dir:"):] if text.startswith("local-dir:") else text
    folder = Path(text).expanduser()
    return folder if (folder / FOLDER_WEIGHTS).is_file() else None


def description_path(source) -> Path | None:
    """Where the description of a PathCLIP source lives: ``pathvlm/clip/weights/<stem>.domain.safetensors``
    for a bundled, trained name (the stem of its weights file); ``<folder>/domain.safetensors`` for a pathvlm folder; else None."""
    from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR

    spec = NAMED_MODELS.get(source) if isinstance(source, str) else None
    if spec is not None:
        # keyed by the weights file, so a pinned alias (pathclip-nano-v2) shares its weights' description
        return WEIGHTS_DIR / f"{Path(spec.trained_weights).stem}{SUFFIX}" if spec.trained_weights else None
    folder = _folder(source)
    return folder / FOLDER_FILE if folder is not None else None


def weights_path(source) -> Path | None:
    """The weights file a description of ``source`` must match (see :func:`description_path`)."""
    from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR

    spec = NAMED_MODELS.get(source) if isinstance(source, str) else None
    if spec is not None:
        return WEIGHTS_DIR / spec.trained_weights if spec.trained_weights else None
    folder = _folder(source)
    return folder / FOLDER_WEIGHTS if folder is not None else None


_LOADED: dict = {}
_LOCK = threading.Lock()


def load_description(name: str, path: str | Path | None = None, weights: str | Path | None = None,
                     warn=None) -> DomainDescription | None:
    """The domain description of the PathCLIP source ``name``, or None (no description, or a stale one).

    ``path`` and ``weights`` override where the description and the weights it must match are read
    (tests; a model folder of your own). A description whose ``weights_sha256`` does not match the
    weights file is stale: ignored, with a warning through ``warn`` (default: the logger)."""
    path = Path(path) if path is not None else description_path(name)
    weights = Path(weights) if weights is not None else weights_path(name)
    if path is None or not path.is_file():
        return None
    key = (str(path), str(weights), path.stat().st_mtime_ns, weights.stat().st_mtime_ns if weights and weights.exists() else 0)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    desc = DomainDescription.load(path)
    if weights is not None and desc.weights_sha256:
        actual = sha256_file(weights) if weights.exists() else "missing"
        if actual != desc.weights_sha256:
            text = (f"the domain description {path.name} was built for other weights than {weights.name} "
                    f"(sha256 {desc.weights_sha256[:12]}..., the file has {actual[:12]}...): it is ignored, so "
                    f"images are not checked against the training domain. Rebuild it with python -m train.clip.domain {name}")
            (warn or log.warning)(text)
            desc = None
    with _LOCK:
        _LOADED[key] = desc
    return desc


def unchecked(model: str | None, reason: str | None = None) -> dict:
    """The verdict for a model without a (valid) description: never flagged."""
    return {"checked": False, "in_domain": None, "model": model, "warning": None,
            "reason": reason or f"{model or 'this model'} has no domain description, so images are not checked"}


def combine(verdicts: list[dict], model: str | None = None) -> dict:
    """One verdict for a request with several images: out of domain when any image is, with the per-image list."""
    if not verdicts:
        return unchecked(model, "no image to check")
    if not any(v["checked"] for v in verdicts):
        return {**verdicts[0], "images": verdicts} if len(verdicts) > 1 else verdicts[0]
    if len(verdicts) == 1:
        return verdicts[0]
    flagged = [v for v in verdicts if v["checked"] and not v["in_domain"]]
    head = flagged[0] if flagged else next(v for v in verdicts if v["checked"])
    return {**head, "in_domain": not flagged, "images": verdicts}


def with_note(markdown: str, verdict: dict | None) -> str:
    """A report's markdown with the out-of-domain note under its title (unchanged when in domain)."""
    if not verdict or not verdict.get("warning"):
        return markdown
    head, sep, rest = markdown.partition("\n")
    note = f"> **Note:** {verdict['warning']}\n"
    return f"{head}\n\n{note}{rest}" if sep else f"{note}\n{markdown}"


class DomainCheck:
    """A loaded PathCLIP model and its description (or none): ``check(images)`` -> verdicts."""

    def __init__(self, model, preprocess, name: str | None, description: DomainDescription | None):
        self.model, self.preprocess, self.name, self.description = model, preprocess, name, description

    @classmethod
    def for_model(cls, model, preprocess, name: str | None, warn=None) -> "DomainCheck":
        """The check for a model built by ``create_clip(name)``: described only when ``name`` (a bundled name
        or a pathvlm folder) has a description matching its weights."""
        desc = load_description(name, warn=warn) if isinstance(name, (str, Path)) else None
        return cls(model, preprocess, name, desc)

    @property
    def active(self) -> bool:
        return self.description is not None

    def status(self) -> dict:
        """What /health says about this model's domain description."""
        d = self.description
        if d is None:
            return {"model": self.name, "described": False}
        return {"model": self.name, "described": True, "trained_on": d.domain, "classes": d.classes,
                "threshold": round(d.threshold, 4)}

    def check_features(self, features: torch.Tensor) -> list[dict]:
        if self.description is None:
            x = torch.as_tensor(features)
            return [unchecked(self.name) for _ in range(x.reshape(-1, x.shape[-1]).shape[0])]
        return self.description.verdicts(features)

    @torch.inference_mode()
    def check(self, images: list) -> list[dict]:
        """Verdicts for PIL images (or paths / bytes)."""
        if self.description is None:
            return [unchecked(self.name) for _ in images]
        from pathvlm.images import load_image

        x = torch.stack([self.preprocess(load_image(im)) for im in images])
        dtype = next(self.model.parameters()).dtype
        device = next(self.model.parameters()).device
        f = torch.nn.functional.normalize(self.model.encode_image(x.to(device=device, dtype=dtype)).float(), dim=-1)
        return self.description.verdicts(f.cpu())


# ---------------------------------------------------------------------- reasoners
def reasoner_tower(source: str | None) -> str | None:
    """The bundled PathCLIP whose image tower a bundled reasoner uses unchanged (its description then applies
    to the reasoner's inputs), else None: reasoners from folders are not checked."""
    from pathvlm.vlm.build import NAMED_REASONERS

    spec = NAMED_REASONERS.get(source) if isinstance(source, str) else None
    return spec.clip if spec is not None else None


_REASONER_CHECKS: dict = {}
_REASONER_LOCK = threading.Lock()  # not _LOCK: load_description takes that one (a Lock is not re-entrant)


def reasoner_check(source: str | None, device: str = "cpu", warn=None) -> DomainCheck:
    """The domain check for a reasoner's images: its bundled tower's description, or an unchecked one."""
    clip = reasoner_tower(source)
    desc = load_description(clip, warn=warn) if clip is not None else None
    if desc is None:
        return DomainCheck(None, None, source, None)
    key = (clip, str(device))
    with _REASONER_LOCK:
        if key not in _REASONER_CHECKS:
            from pathvlm.clip.factory import create_clip

            model, preprocess, _ = create_clip(clip, device=device)
            _REASONER_CHECKS[key] = DomainCheck(model, preprocess, clip, desc)
        return _REASONER_CHECKS[key]
