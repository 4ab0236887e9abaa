"""Group-aware splits and the leakage audit.

Whole groups (slide, patient, figure, LC25000 augmentation group) go to one split: groups are
ordered by a seeded hash and cut at the cumulative ratios, so the assignment is reproducible and
does not depend on row order. The audit fails loudly when a group, an exact image or a
near-duplicate image appears in more than one split.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from pathvlm.errors import PathVLMError


class LeakageError(PathVLMError):
    """The same group or image appears in more than one split."""


def assign_splits(groups: list[str], ratios: dict[str, float], seed: int = 0) -> dict[str, str]:
    """Group -> split name, with split sizes (in rows) as close to ``ratios`` as whole groups allow."""
    total = sum(ratios.values())
    if total <= 0 or any(r < 0 for r in ratios.values()):
        raise PathVLMError(f"split ratios must be non-negative and sum above 0: {ratios}")
    sizes = Counter(groups)
    order = sorted(sizes, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n = sum(sizes.values())
    bounds, acc = [], 0.0
    for name, r in ratios.items():
        acc += r / total
        bounds.append((name, acc * n))
    out, seen, b = {}, 0, 0
    for g in order:
        while b < len(bounds) - 1 and seen >= bounds[b][1] - 1e-9:
            b += 1
        out[g] = bounds[b][0]
        seen += sizes[g]
    return out


@dataclass
class LeakageReport:
    shared_groups: dict[str, list[str]] = field(default_factory=dict)  # group -> splits
    shared_images: list[tuple[str, list[str]]] = field(default_factory=list)  # image hash -> splits
    near_duplicate_pairs: list[tuple[str, str]] = field(default_factory=list)  # (id, id) across splits

    @property
    def ok(self) -> bool:
        return not (self.shared_groups or self.shared_images or self.near_duplicate_pairs)

    def summary(self) -> dict:
        return {"ok": self.ok, "shared_groups": len(self.shared_groups), "shared_images": len(self.shared_images),
                "cross_split_near_duplicates": len(self.near_duplicate_pairs),
                "examples": {"groups": dict(list(self.shared_groups.items())[:5]),
                             "near_duplicates": self.near_duplicate_pairs[:5]}}


def audit_leakage(rows: list[dict], near_pairs: list[tuple[int, int]] | None = None) -> LeakageReport:
    """Rows need ``split``, ``group`` and optionally ``image_sha256``; near_pairs index into rows."""
    report = LeakageReport()
    by_group: dict[str, set] = defaultdict(set)
    by_image: dict[str, set] = defaultdict(set)
    for r in rows:
        by_group[r["group"]].add(r["split"])
        if r.get("image_sha256"):
            by_image[r["image_sha256"]].add(r["split"])
    report.shared_groups = {g: sorted(s) for g, s in by_group.items() if len(s) > 1}
    report.shared_images = [(h, sorted(s)) for h, s in by_image.items() if len(s) > 1]
    for i, j in near_pairs or []:
        if rows[i]["split"] != rows[j]["split"]:
            report.near_duplicate_pairs.append((rows[i]["id"], rows[j]["id"]))
    return report


def require_no_leakage(report: LeakageReport) -> None:
    if not report.ok:
        s = report.summary()
        raise LeakageError(
            f"leakage across splits: {s['shared_groups']} shared groups, {s['shared_images']} shared images, "
            f"{s['cross_split_near_duplicates']} near-duplicate pairs; examples {s['examples']}"
        )
