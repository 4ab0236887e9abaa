"""Build a bundled PathCLIP's domain description and measure it (``pathvlm.domain``).

    python -m train.clip.domain pathclip-nano --config train/recipes/clip/pathclip_nano.yaml \\
        --report runs/domain/pathclip-nano.json --check gallery=runs/gallery --check oral_scc=../shared/data/oral_scc

1. Embeds the training split of the recipe's data (the sources it trained on: ``exclude_sources`` and
   ``eval_unseen_sources`` left out) with the bundled weights, as users load them, and fits the
   description (class means, Ledoit-Wolf pooled covariance, top ``--k`` directions).
2. Calibrates the threshold on the validation split: by default the group-bootstrap bound at which,
   with ``--confidence`` 0.95, ``--target`` 0.95 of the tiles of new groups pass (whole leakage groups
   resampled; ``DomainDescription.calibrate``). Writes the description beside the weights, with their
   sha256 (``--out`` elsewhere, ``--dry-run`` not at all); for a model folder, as ``domain.safetensors``
   inside it.
3. Reports the pass rate on the test split (in domain, never used to fit or calibrate), the flagged
   fraction on the recipe's unseen sources (e.g. the HGSC tiles), and on each ``--check NAME=DIR``
   folder of out-of-domain images; a folder with a ``metadata.jsonl`` (the demo gallery) is split by
   ``source_package``, a folder of class sub-folders (``Normal/``, ``OSCC/``) by sub-folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pathvlm.domain import DomainDescription, description_path, sha256_file, weights_path
from pathvlm.errors import PathVLMError

# Plain words for the data sources a bundled model trains on (the domain line users read).
SOURCE_WORDS = {"lc25000_colon": "colon", "oral_scc": "oral mucosa", "histolytics_hgsc": "ovarian (HGSC)"}


def domain_text(sources: list[str], classes: list[str]) -> str:
    organs = [SOURCE_WORDS.get(s, s) for s in sorted(set(sources))]
    return f"{' and '.join(organs)} H&E tiles ({', '.join(classes)})"


def _unique(rows):
    from train.clip.evaluate import unique_images

    return unique_images(rows)


def embed(model, preprocess, images: list, desc: str) -> torch.Tensor:
    from pathvlm.embed import embed_images

    print(f"embedding {len(images)} {desc} ...", file=sys.stderr, flush=True)
    return embed_images(model, preprocess, images, num_workers=0)


def folder_groups(folder: Path) -> dict[str, list[Path]]:
    """Images of an out-of-domain folder, grouped: by ``source_package`` when it has the gallery's
    ``metadata.jsonl``, by class sub-folder when it has them, else one group."""
    from pathvlm.images import list_images

    if not folder.is_dir():
        raise PathVLMError(f"--check: {folder} is not a folder")
    meta = folder / "metadata.jsonl"
    if meta.exists():
        groups: dict[str, list[Path]] = {}
        for line in meta.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                groups.setdefault(r.get("source_package") or "unknown", []).append(folder / r["file_name"])
        return groups
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and list_images(p))
    if subs:
        return {p.name: list_images(p) for p in subs}
    return {folder.name: list_images(folder)}


def rate(desc: DomainDescription, feats: torch.Tensor) -> dict:
    s = desc.scores(feats)
    flagged = (s > desc.threshold).float()
    return {"n": int(s.numel()), "pass_rate": round(float(1 - flagged.mean()), 4),
            "flagged": round(float(flagged.mean()), 4),
            "score_median": round(float(s.median()), 3) if s.numel() else None}


def build(name: str, config: str, overrides: dict, k: int, target: float, domain: str | None, out: Path | None,
          checks: list[tuple[str, Path]], dry_run: bool = False, confidence: float | None = 0.95) -> dict:
    from pathvlm.clip.factory import create_clip
    from train.clip.config import load_config
    from train.clip.data import read_rows

    cfg = load_config(config, overrides)
    held = list(cfg.exclude_sources) + list(cfg.eval_unseen_sources)
    weights = weights_path(name)
    if weights is None or not weights.exists():
        raise PathVLMError(f"{name} is neither a bundled, trained PathCLIP (pathvlm models) nor a pathvlm model folder "
                           "(with open_clip_model.safetensors): nothing to describe")
    t0 = time.time()
    model, preprocess, _ = create_clip(name)
    train = _unique(read_rows(cfg.data, "train", exclude_sources=held))
    val = _unique(read_rows(cfg.data, "val", exclude_sources=held))
    test = _unique(read_rows(cfg.data, "test", exclude_sources=held))
    f_train = embed(model, preprocess, [r["image"] for r in train], "training tiles")
    classes = sorted({r["label"] for r in train})
    text = domain or domain_text([r["source"] for r in train], classes)
    desc = DomainDescription.fit(f_train, [r["label"] for r in train], model=name, domain=text, k=k,
                                 weights_sha256=sha256_file(weights))
    desc.calibrate(embed(model, preprocess, [r["image"] for r in val], "validation tiles"), target,
                   groups=[r["group"] for r in val], confidence=confidence)
    report = {"model": name, "weights_sha256": desc.weights_sha256, "domain": text, "data": cfg.data, "k": desc.info["k"],
              "target": target, "confidence": confidence, "threshold": desc.threshold, "classes": classes,
              "train": {"n": len(train)}, "val": {"n": len(val), "pass_rate": round(desc.info["calibration_pass_rate"], 4)},
              "test": rate(desc, embed(model, preprocess, [r["image"] for r in test], "test tiles"))}
    if cfg.eval_unseen_sources:
        unseen = _unique([r for s in ("train", "val", "test") for r in read_rows(cfg.data, s, only_sources=cfg.eval_unseen_sources)])
        by_source: dict[str, list] = {}
        for r in unseen:
            by_source.setdefault(r["source"], []).append(r["image"])
        report["unseen_sources"] = {s: rate(desc, embed(model, preprocess, imgs, s)) for s, imgs in by_source.items()}
    report["checks"] = {}
    for check_name, folder in checks:
        groups = folder_groups(folder)
        per = {g: rate(desc, embed(model, preprocess, files, f"{check_name}/{g}")) for g, files in groups.items()}
        n = sum(v["n"] for v in per.values())
        all_flagged = sum(v["flagged"] * v["n"] for v in per.values()) / max(n, 1)
        report["checks"][check_name] = {"folder": str(folder), "n": n, "flagged": round(all_flagged, 4), "groups": per}
    desc.info.update({"val_pass_rate": report["val"]["pass_rate"], "test_pass_rate": report["test"]["pass_rate"],
                      "data": cfg.data, "command": f"python -m train.clip.domain {name} --config {config}"})
    if not dry_run:
        path = desc.save(out or description_path(name))
        report["description"] = {"path": str(path), "bytes": path.stat().st_size}
    report["seconds"] = round(time.time() - t0, 1)
    return report


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.clip.domain", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a bundled, trained PathCLIP (pathclip-nano) or a pathvlm model folder "
                                "(e.g. runs/clip/pathclip-nano/final; the description goes inside it)")
    p.add_argument("--config", required=True, help="the model's training recipe (its data, held-out sources)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. data=/work/runs/data/nano")
    p.add_argument("--k", type=int, default=16, help="principal directions kept of the pooled covariance (default 16)")
    p.add_argument("--target", type=float, default=0.95,
                   help="share of in-domain tiles that must pass (default 0.95)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="confidence that --target of the tiles of new groups pass: the threshold is that quantile of "
                        "group-bootstrap bounds over the validation groups (default 0.95; 0 = the plain --target "
                        "quantile of the validation scores, the v2 descriptions' rule)")
    p.add_argument("--domain-text", default=None, help="the training domain in plain words (default: from the "
                                                       "sources and classes, e.g. 'colon H&E tiles (...)')")
    p.add_argument("--out", default=None, help="write the description here instead of beside the bundled weights")
    p.add_argument("--dry-run", action="store_true", help="measure only; write no description")
    p.add_argument("--check", action="append", default=[], metavar="NAME=DIR",
                   help="an out-of-domain image folder to report the flagged fraction on (repeatable)")
    p.add_argument("--report", default=None, help="write the measurements to this JSON file")
    return p


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise PathVLMError(f"{what} takes NAME=VALUE, got {item!r}")
        out.append((key, value))
    return out


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        import yaml

        overrides = {k: yaml.safe_load(v) for k, v in _pairs(args.set, "--set")}
        checks = [(k, Path(v).expanduser()) for k, v in _pairs(args.check, "--check")]
        report = build(args.name, args.config, overrides, args.k, args.target, args.domain_text,
                       Path(args.out) if args.out else None, checks, dry_run=args.dry_run,
                       confidence=args.confidence or None)
    except PathVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
