"""report.md: the results of one ``pathvlm eval`` run as markdown (one table of scalar metrics per task,
with its data hash, seed, prompts and decoding settings). ``flat_metrics`` is shared with report.html."""
from __future__ import annotations


def flat_metrics(m: dict, prefix: str = "") -> dict:
    """Scalar metrics with nested keys joined by ' / ' (confusion matrices, bins and examples left out)."""
    flat = {}
    for k, v in m.items():
        if k in ("confusion", "reliability", "examples", "decoding"):
            continue
        if isinstance(v, dict):
            flat.update(flat_metrics(v, f"{prefix}{k} / "))
        elif not isinstance(v, list):
            flat[f"{prefix}{k}"] = v
    return flat


def render_report(results: dict) -> str:
    L = ["# Evaluation", ""]
    if "model" in results:
        L.append(f"PathCLIP `{results['model']}`, fingerprint `{results['fingerprint']}`.")
    if "reasoner" in results:
        L.append(f"Reasoner `{results['reasoner']}`, fingerprint `{results.get('reasoner_fingerprint')}`.")
    L.append("")
    for name, r in results["tasks"].items():
        if "skipped" in r:
            L += [f"## {name} ({r['kind']}): skipped", "", r["skipped"], ""]
            continue
        L += [f"## {name} ({r['kind']})", "", f"{r['n_samples']} samples, data sha256 `{r['data_sha256'][:16]}`, "
              f"seed {r['seed']}, prompts `{r['prompts']}`.", ""]
        m = r["metrics"]
        if "decoding" in m:
            L += ["Decoding: " + ", ".join(f"{k}={v}" for k, v in sorted(m["decoding"].items())) + ".", ""]
        if "images" in m:
            L += [f"Images: {m['images']}.", ""]
        L += ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                                                      for k, v in flat_metrics(m).items()]
        if "confusion" in m:
            L += ["", f"![confusion](plots/{name}_confusion.png) ![reliability](plots/{name}_reliability.png)"]
        L.append("")
    return "\n".join(L)
