"""report.html: the same results as report.md in one self-contained page (plots embedded as base64
PNG, so the file can be mailed or attached to CI), with confusion matrices, reliability diagrams,
retrieval grids, the reasoner's image-dependence controls and example completions."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from evals.markdown_report import flat_metrics

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top}
th{background:#f3f3f3}code{background:#f5f5f5;padding:0 3px}.skip{color:#a60}img{max-width:100%;margin:4px}
.ex td{max-width:420px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}"""


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


def _table(rows: list[tuple], head: tuple, cls: str = "") -> str:
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows]
    return "".join(out) + "</table>"


def render_html(results: dict, out_dir: Path) -> str:
    plots = Path(out_dir) / "plots"
    B = [f"<!doctype html><html><head><meta charset='utf-8'><title>pathvlm evaluation</title><style>{STYLE}</style>"
         "</head><body><h1>Evaluation</h1>"]
    if "model" in results:
        B.append(f"<p>PathCLIP <code>{html.escape(results['model'])}</code>, fingerprint <code>{results['fingerprint']}</code></p>")
    if "reasoner" in results:
        B.append(f"<p>Reasoner <code>{html.escape(results['reasoner'])}</code>, fingerprint "
                 f"<code>{html.escape(str(results.get('reasoner_fingerprint')))}</code></p>")
    names = list(results["tasks"])
    B.append("<ul>" + "".join(f'<li><a href="#{html.escape(n)}">{html.escape(n)}</a></li>' for n in names) + "</ul>")
    for name, r in results["tasks"].items():
        B.append(f'<h2 id="{html.escape(name)}">{html.escape(name)} <small>({html.escape(r["kind"])})</small></h2>')
        if "skipped" in r:
            B.append(f'<p class="skip">skipped: {html.escape(r["skipped"])}</p>')
            continue
        m = r["metrics"]
        B.append(f"<p>{r['n_samples']} samples, data sha256 <code>{r['data_sha256'][:16]}</code>, seed {r['seed']}, "
                 f"prompts <code>{html.escape(str(r['prompts']))}</code></p>")
        if "decoding" in m:
            B.append("<p>Decoding: " + ", ".join(f"{html.escape(k)}={_fmt(v)}" for k, v in sorted(m["decoding"].items())) + "</p>")
        if "images" in m:
            B.append(f'<p class="skip">Images: {html.escape(m["images"])}</p>')
        controls = m.get("controls")
        flat = flat_metrics({k: v for k, v in m.items() if k != "controls"})
        B.append(_table(list(flat.items()), ("metric", "value")))
        if controls:
            B.append("<h3>Image-dependence controls</h3><p>Each closed question asked again with a white image, noise, "
                     "and another sample's image. A model that reads the image changes its answers and loses accuracy; "
                     "one that ignores it keeps the same answers.</p>")
            rows = [("original", "", controls["original"]["answer_entropy_bits"], controls["original"]["modal_share"], "")]
            rows += [(k, v["answer_change_rate"], v["answer_entropy_bits"], v["modal_share"], v["accuracy"])
                     for k, v in controls.items() if isinstance(v, dict) and k != "original"]
            B.append(_table(rows, ("images shown", "answer change rate", "answer entropy (bits)", "modal share", "accuracy")))
        figs = [_img(plots / f"{name}_{kind}.png", kind) for kind in ("confusion", "reliability", "retrieval")]
        B.append("<div>" + "".join(figs) + "</div>")
        if m.get("examples"):
            B.append("<h3>Examples</h3>")
            B.append(_table([(e["id"], e["question"], e["reference"], e["completion"]) for e in m["examples"]],
                            ("id", "question", "reference", "completion"), cls="ex"))
    B.append("</body></html>")
    return "\n".join(B)
