"""The data card: what a recipe did, as JSON and markdown."""
from __future__ import annotations

import json
from pathlib import Path


def write_card(card: dict, folder: Path) -> None:
    (folder / "data_card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    (folder / "data_card.md").write_text(render_markdown(card))


def render_markdown(card: dict) -> str:
    L = [f"# Data card: {card['recipe']}", "", card.get("description") or "", ""]
    if card.get("recipe_file"):
        L += [f"Built with `pathvlm data build {card['recipe_file']}`.", ""]
    L += ["## Sources", "", "| source | adapter | records | licence | root |", "|---|---|---|---|---|"]
    for name, s in card["sources"].items():
        L.append(f"| {name} | {s['adapter']} | {s['records']} | {s['licence']} | `{s['root']}` |")
    L += ["", "## Stages (rows in -> out)", "", "| stage | in | out | details |", "|---|---|---|---|"]
    for st in card["stages"]:
        details = ", ".join(f"{k}={v}" for k, v in st.items() if k not in ("stage", "in", "out"))
        L.append(f"| {st['stage']} | {st['in']} | {st['out']} | {details} |")
    m = card["malformed"]
    L += ["", "## Malformed rows (counted and skipped)", ""]
    L += [f"- {k}: {v}" for k, v in m["counts"].items()] or ["- none"]
    if m["examples"]:
        L += ["", "Examples:"] + [f"- {e['source']}: {e['reason']} at `{e['where']}`" for e in m["examples"][:5]]
    vf = card.get("visual_filter", {})
    L += ["", "## Visual-sentence filter", "",
          f"Mode `{vf.get('mode')}`: kept {vf.get('sentences_kept', 0)} sentences, removed {vf.get('sentences_removed', 0)}.", ""]
    for ex in vf.get("examples", {}).get("removed", [])[:5]:
        L.append(f"- removed from \"{ex['caption'][:160]}\": " + " / ".join(f"\"{s}\"" for s in ex["removed"]))
    for ex in vf.get("examples", {}).get("kept", [])[:3]:
        L.append("- kept: " + " / ".join(f"\"{s}\"" for s in ex["kept"]))
    d = card.get("duplicates", {})
    L += ["", "## Duplicates", ""] + [f"- {k}: {v}" for k, v in d.items() if k != "caption_pair_examples"]
    lc = card.get("label_conflicts")
    if lc:
        L += ["", "## Label conflicts (identical images under two labels, dropped)", "",
              f"{lc['images']} images, {lc['rows_dropped']} rows: " + ", ".join(lc["examples"])]
    L += ["", "## Splits", "", "| split | rows | groups |", "|---|---|---|"]
    for k, v in card["splits"]["rows"].items():
        L.append(f"| {k} | {v} | {card['splits']['groups'][k]} |")
    a = card["leakage_audit"]
    L += ["", "## Leakage audit", "",
          f"**{'PASS' if a['ok'] else 'FAIL'}**: {a['shared_groups']} groups, {a['shared_images']} identical images and "
          f"{a['cross_split_near_duplicates']} near-duplicate image pairs shared across splits.", ""]
    L += ["## Outputs", "", "| dataset | split | rows |", "|---|---|---|"]
    for name, splits in card["outputs"].items():
        for split, n in splits.items():
            L.append(f"| {name} | {split} | {n} |")
    L += ["", "## Example rows", ""]
    for name, rows in card.get("examples", {}).items():
        L += [f"### {name}", "", "```json"] + [json.dumps(r, default=str)[:800] for r in rows] + ["```", ""]
    return "\n".join(L) + "\n"
