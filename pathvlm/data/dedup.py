"""Exact and near-duplicate detection for images (perceptual hash) and text (SimHash).

Near-duplicates are found with banded lookup: a 64-bit hash is cut into ``bands`` pieces, and
two hashes within Hamming distance ``< bands`` must agree exactly on at least one piece
(pigeonhole), so only items sharing a piece are compared. Exact for thresholds below ``bands``.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np
from PIL import Image


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_text(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", re.sub(r"\s+", " ", (text or "").lower())).strip()


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: 64 bits of horizontal gradient signs on a 9x8 greyscale thumbnail.
    Robust to resizing, JPEG re-encoding and small colour changes."""
    g = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def simhash(text: str, bits: int = 64) -> int:
    """SimHash over word 3-shingles (and words for short texts)."""
    words = normalise_text(text).split()
    feats = [" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))] if len(words) >= 3 else words
    acc = np.zeros(bits, dtype=np.int64)
    shifts = np.arange(bits, dtype=np.uint64)
    for f in feats:
        h = np.uint64(int.from_bytes(hashlib.blake2b(f.encode(), digest_size=8).digest(), "big"))
        acc += np.where((h >> shifts) & np.uint64(1), 1, -1)
    return int(sum(1 << i for i in range(bits) if acc[i] > 0))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicate_pairs(hashes: list[int], max_distance: int, bands: int = 8, bits: int = 64) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most ``max_distance`` bits."""
    if max_distance >= bands:
        raise ValueError("max_distance must be smaller than the number of bands")
    width = bits // bands
    mask = (1 << width) - 1
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        for b in range(bands):
            buckets[(b, (h >> (b * width)) & mask)].append(i)
    pairs = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if hamming(hashes[i], hashes[j]) <= max_distance:
                    pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def duplicate_clusters(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Union-find: for each item, the smallest index of its duplicate cluster (itself if unique)."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]
