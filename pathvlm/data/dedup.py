"""Exact and near-duplicate detection for images (perceptual hash, ``imagehash``) and captions (MinHash LSH,
``datasketch``).

Near-duplicates are found with banded lookup: a 64-bit hash is cut into ``bands`` pieces, and
two hashes within Hamming distance ``< bands`` must agree exactly on at least one piece
(pigeonhole), so only items sharing a piece are compared. Exact for thresholds below ``bands``.
:func:`near_duplicates` does the same search at scale (numpy, identical hashes grouped first, ``max_distance + 1``
pieces) and returns cluster edges plus an exact pair count, so a crowd of alike tiles costs no quadratic pair list.
"""
from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def normalise_text(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", re.sub(r"\s+", " ", (text or "").lower())).strip()


def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash (``imagehash.dhash``): 64 bits of horizontal gradient signs on a 9x8 greyscale thumbnail,
    as an int (the hex string imagehash prints, read as a number). Robust to resizing, JPEG re-encoding and small
    colour changes."""
    import imagehash

    return int(str(imagehash.dhash(image, hash_size=size)), 16)


def shingles(text: str) -> set[str]:
    """Word 3-shingles of the normalised text (its words when it has fewer than three)."""
    words = normalise_text(text).split()
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)} if len(words) >= 3 else set(words)


@lru_cache(maxsize=4)
def _permutations(num_perm: int) -> dict:
    """The seed-1 permutations (and, in datasketch 2, their scheme), made once per process: building them took
    about 70% of the time of hashing a short caption."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    kw = {"permutations": m.permutations}
    if getattr(m, "scheme", None) is not None:
        kw["scheme"] = m.scheme
    return kw


def minhash(text: str, num_perm: int = 128):
    """A datasketch ``MinHash`` of the text's word 3-shingles (seed 1: the same text gives the same signature in
    every process; the permutations are reused, the signature is the same as a fresh ``MinHash(seed=1)``'s)."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1, **_permutations(num_perm))
    m.update_batch([s.encode("utf-8") for s in sorted(shingles(text))])
    return m


def caption_near_duplicates(texts: list[str], threshold: float = 0.8, num_perm: int = 128,
                            workers: int = 1) -> NearDuplicates:
    """Captions whose word 3-shingle sets have Jaccard similarity >= ``threshold``: datasketch MinHash LSH finds
    candidates among distinct normalised texts, each candidate is confirmed by its exact Jaccard similarity, and
    identical texts are grouped first (their pairs counted, not listed). Returns edges and the exact count as
    :func:`near_duplicates` does."""
    from datasketch import MinHashLSH

    from pathvlm.data.parallel import ordered_map

    n = len(texts)
    # two regex passes per caption: on the pool for large builds (in order, so the same list)
    norm = ordered_map(normalise_text, texts, workers if n >= 2000 else 1, chunksize=1024)
    first: dict[str, int] = {}
    members: dict[str, int] = {}
    edges: set[tuple[int, int]] = set()
    for i, t in enumerate(norm):
        if t in first:
            edges.add((first[t], i))
            members[t] += 1
        else:
            first[t], members[t] = i, 1
    pair_count = sum(m * (m - 1) // 2 for m in members.values())
    distinct = list(first)
    if len(distinct) > 1:
        sigs = ordered_map(minhash, distinct, workers)
        sets = [shingles(t) for t in distinct]
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        for k, sig in enumerate(sigs):
            lsh.insert(k, sig, check_duplication=False)
        for a, sig in enumerate(sigs):
            for b in lsh.query(sig):
                if b <= a:
                    continue
                union = len(sets[a] | sets[b])
                if union and len(sets[a] & sets[b]) / union >= threshold:
                    pair_count += members[distinct[a]] * members[distinct[b]]
                    i, j = first[distinct[a]], first[distinct[b]]
                    edges.add((min(i, j), max(i, j)))
    return NearDuplicates(n, np.array(sorted(edges), np.int64).reshape(-1, 2), pair_count)


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


def duplicate_clusters(n: int, pairs) -> np.ndarray:
    """For each of ``n`` items, the smallest index of its cluster: the connected components of ``pairs`` (index
    pairs, a list or an ``[E, 2]`` array), an unlinked item its own cluster. scipy's ``connected_components`` on a
    sparse graph: numpy arrays throughout, where a Python union-find held two lists of ``n`` ints."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = np.asarray(pairs, np.int64).reshape(-1, 2)
    if not len(p):
        return np.arange(n, dtype=np.int64)
    if p.min() < 0 or p.max() >= n:
        raise ValueError(f"pair indices must lie in [0, {n})")
    graph = coo_matrix((np.ones(len(p), np.int8), (p[:, 0], p[:, 1])), shape=(n, n)).tocsr()
    _, label = connected_components(graph, directed=False)
    _, smallest = np.unique(label, return_index=True)  # labels are 0..k-1; the first item of each is its smallest
    return smallest.astype(np.int64)[label]


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The distinct ``(a, b)`` pairs of two non-negative integer arrays, sorted, as an ``[k, 2]`` array: one int64 key
    per pair (``np.unique(..., axis=0)`` would sort a structured copy, several times the memory at a million rows)."""
    if not len(a):
        return np.zeros((0, 2), np.int64)
    base = int(b.max()) + 1
    keys = np.unique(np.asarray(a, np.int64) * base + b)
    return np.stack([keys // base, keys % base], 1)


@dataclass
class NearDuplicates:
    """The result of :func:`near_duplicates` over ``n`` items.

    ``edges`` (an ``[E, 2]`` int64 array) are item pairs (i < j, sorted) that link every near-duplicate cluster:
    all pairs between items of *different* hash values within the distance, one pair per such pair of values
    (their first items), and a star (first item to each other) inside each group of identical hashes. The
    connected components of ``edges`` (:func:`duplicate_clusters`) are exactly the clusters that all pairs would
    give, but their number grows with the distinct hash values, not with the square of a group of identical
    hashes (many blank or background tiles hash alike). ``pair_count`` is the exact number of item pairs within
    the distance, counted without listing them."""

    n: int
    edges: np.ndarray
    pair_count: int
    value_pairs: np.ndarray | None = None  # the close pairs of distinct hash values (``close_value_pairs``)


def _band_widths(bits: int, bands: int) -> list[int]:
    base, extra = divmod(bits, bands)
    return [base + (1 if b < extra else 0) for b in range(bands)]


def _close_pairs_in_runs(values: np.ndarray, keys: np.ndarray, max_distance: int, rows: int = 512,
                         cols: int = 2048) -> np.ndarray:
    """Index pairs (a < b) of ``values`` sharing ``keys`` whose Hamming distance is at most ``max_distance``,
    compared in tiles of ``rows`` x ``cols`` (a bucket holding most of the data costs time in proportion, and
    memory for one tile, about 10 MB, never a pair list or a block as long as the bucket)."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    ends = np.r_[starts[1:], len(k)]
    found = []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = order[s:e]
        vals = values[members]
        for lo in range(0, len(members), rows):
            block = vals[lo:lo + rows]
            for c0 in range(lo, len(members), cols):  # this block against itself and later members
                dist = np.bitwise_count(block[:, None] ^ vals[None, c0:c0 + cols])
                a, b = np.nonzero(dist <= max_distance)
                b = b + c0
                keep = b > lo + a  # a later member
                if keep.any():
                    i, j = members[lo + a[keep]], members[b[keep]]
                    found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], 1))
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def _band_pairs(task) -> np.ndarray:
    """The close index pairs of ``values`` that share one band (``width`` bits from ``shift``): one pool task."""
    values, shift, width, max_distance = task
    keys = (values >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    return _close_pairs_in_runs(values, keys, max_distance)


def close_value_pairs(values: np.ndarray, max_distance: int, bits: int = 64, workers: int = 1) -> np.ndarray:
    """Pairs ``(a, b)``, ``a < b``, of distinct sorted hash ``values`` within ``max_distance`` bits, as values: the
    multi-index search, one band per task on ``workers`` processes. Pairs among any subset of ``values`` are these
    pairs with both values in the subset."""
    if max_distance == 0 or len(values) < 2:
        return np.zeros((0, 2), np.uint64)
    tasks, shift = [], 0
    for width in _band_widths(bits, max_distance + 1):
        tasks.append((values, shift, width, max_distance))
        shift += width
    from pathvlm.data.parallel import ordered_map

    found = ordered_map(_band_pairs, tasks, min(workers, len(tasks)), chunksize=1)
    pairs = np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 2), np.int64)
    return values[pairs] if len(pairs) else np.zeros((0, 2), np.uint64)


def near_duplicates(hashes: list[int] | np.ndarray, max_distance: int, bits: int = 64, workers: int = 1,
                    known_pairs: np.ndarray | None = None) -> NearDuplicates:
    """All items whose ``bits``-bit hashes differ in at most ``max_distance`` bits, as cluster edges and an exact
    pair count (see :class:`NearDuplicates`). Exact: identical hashes are grouped first; distinct values are
    compared by multi-index hashing, the hash cut into ``max_distance + 1`` pieces, of which any two values within
    the distance share at least one exactly (pigeonhole), so only values sharing a piece are compared
    (``close_value_pairs``, on ``workers`` processes). ``known_pairs``: a previous result's ``value_pairs`` for a
    superset of these hashes at the same distance, so the search is not run again."""
    n = len(hashes)
    if n == 0:
        return NearDuplicates(0, np.zeros((0, 2), np.int64), 0, np.zeros((0, 2), np.uint64))
    if max_distance < 0 or max_distance >= bits:
        raise ValueError(f"max_distance must be in [0, {bits})")
    if isinstance(hashes, np.ndarray) and hashes.dtype == np.uint64 and bits == 64:
        h = hashes
    else:
        h = np.array([int(x) & ((1 << bits) - 1) for x in hashes], dtype=np.uint64)
    uniq, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    pair_count = int((counts * (counts - 1) // 2).sum())
    dup_items = np.flatnonzero(counts[inverse] > 1)
    roots = first[inverse[dup_items]]
    star = dup_items != roots  # star inside each group of identical hashes: its first item to each other one
    ei, ej = [roots[star]], [dup_items[star]]
    if known_pairs is None:
        value_pairs = close_value_pairs(uniq, max_distance, bits, workers)
    else:  # the pairs of a superset, kept where both values are among these hashes
        pos = np.searchsorted(uniq, known_pairs)
        inside = pos < len(uniq)
        inside[inside] = uniq[pos[inside]] == known_pairs[inside]
        value_pairs = known_pairs[inside.all(axis=1)]
    if len(value_pairs):
        allp = np.searchsorted(uniq, value_pairs)
        pair_count += int((counts[allp[:, 0]].astype(np.int64) * counts[allp[:, 1]]).sum())
        ei.append(first[allp[:, 0]])
        ej.append(first[allp[:, 1]])
    i, j = np.concatenate(ei), np.concatenate(ej)
    edges = unique_pairs(np.minimum(i, j), np.maximum(i, j))  # (i < j), sorted
    return NearDuplicates(n, edges, pair_count, value_pairs)
