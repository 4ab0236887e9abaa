"""`pathvlm data build --workers N` writes the same bytes as one process; the scale near-duplicate search equals
brute force and keeps a crowd of identical hashes linear."""
import itertools
import json
import os
import random

import pytest

from pathvlm.data import dedup
from pathvlm.data.build import build_recipe
from pathvlm.data.config import load_recipe
from pathvlm.data.parallel import ordered_map, resolve_workers


def _square(x):
    return x * x


def test_ordered_map_keeps_order_for_any_worker_count():
    items = list(range(50))
    assert ordered_map(_square, items, 1) == ordered_map(_square, items, 3, chunksize=4) == [x * x for x in items]
    assert resolve_workers(None) == 1 and resolve_workers(0) == 1 and resolve_workers(-1) >= 1


def test_two_workers_build_byte_identical_outputs_and_card(recipe_dir, tmp_path):
    recipe = load_recipe(recipe_dir / "recipe.yaml")
    one = build_recipe(recipe, tmp_path / "one", progress=False, workers=1)
    two = build_recipe(recipe, tmp_path / "two", progress=False, workers=2)
    assert one["checksums"] == two["checksums"]  # every parquet shard, data_card.json and data_card.md
    assert (tmp_path / "one" / "data_card.json").read_bytes() == (tmp_path / "two" / "data_card.json").read_bytes()
    assert json.loads((tmp_path / "two" / "checksums.json").read_text()) == two["checksums"]


def test_near_duplicates_equal_brute_force_clusters_and_count():
    rng = random.Random(0)
    hashes = []
    for _ in range(200):
        h = rng.getrandbits(64)
        hashes.append(h)
        for _ in range(rng.randint(0, 2)):
            x = h
            for _ in range(rng.randint(0, 6)):
                x ^= 1 << rng.randrange(64)
            hashes.append(x)
    hashes += [hashes[3]] * 15 + [0] * 12 + [1, 3]  # identical crowds and their neighbours
    for d in (0, 3, 4):
        brute = [(i, j) for i, j in itertools.combinations(range(len(hashes)), 2) if dedup.hamming(hashes[i], hashes[j]) <= d]
        nd = dedup.near_duplicates(hashes, d)
        assert nd.pair_count == len(brute)
        assert set(map(tuple, nd.edges.tolist())) <= set(brute)
        assert (dedup.duplicate_clusters(len(hashes), nd.edges) == dedup.duplicate_clusters(len(hashes), brute)).all()


def test_alike_hashes_do_not_blow_up():
    """50,000 tiles with one hash (blank background) plus 20,000 others: the pairs are counted (1.25e9), not
    listed; the edges that link the cluster grow with the items."""
    rng = random.Random(1)
    hashes = [0x0F0F0F0F0F0F0F0F] * 50_000 + [rng.getrandbits(64) for _ in range(20_000)]
    nd = dedup.near_duplicates(hashes, 4)
    assert nd.pair_count >= 50_000 * 49_999 // 2
    assert len(nd.edges) < 60_000
    assert len(set(dedup.duplicate_clusters(len(hashes), nd.edges)[:50_000])) == 1


def test_datatrove_engine_local_mode_builds_the_same_bytes(recipe_dir, tmp_path):
    import pytest

    pytest.importorskip("datatrove")
    recipe = load_recipe(recipe_dir / "recipe.yaml")
    one = build_recipe(recipe, tmp_path / "one", progress=False, workers=1)
    dt = build_recipe(recipe, tmp_path / "dt", progress=False, workers=2, engine="datatrove")
    assert one["checksums"] == dt["checksums"]


def test_ray_engine_local_mode_maps_in_order():
    import pytest

    pytest.importorskip("ray.data")
    from pathvlm.data.engine import engine_map

    texts = [f"Tumour  Cells, {i}!" for i in range(40)]  # a library function: Ray's workers import it by name
    assert engine_map(dedup.normalise_text, texts, "ray", workers=2) == [dedup.normalise_text(t) for t in texts]


def test_close_pairs_are_the_same_whatever_the_tile_size():
    """Buckets are compared in tiles of rows x cols (memory for one tile, however large the bucket): tiles smaller
    than the buckets, of sizes that do not divide them, find the same pairs, also as numpy uint64 input."""
    import numpy as np

    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (400, 3)).astype(np.uint64)
    values = np.unique(base[rng.integers(0, 40, 400)] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2])
    keys = values & np.uint64(0x3)  # four large buckets
    whole = dedup._close_pairs_in_runs(values, keys, 6)
    for rows, cols in ((3, 5), (7, 2), (1, 1)):
        tiled = dedup._close_pairs_in_runs(values, keys, 6, rows=rows, cols=cols)
        assert sorted(map(tuple, tiled.tolist())) == sorted(map(tuple, whole.tolist())) and len(whole) > 50
    as_list = dedup.near_duplicates([int(v) for v in values], 6)
    as_array = dedup.near_duplicates(values, 6)
    assert (as_list.edges.tolist(), as_list.pair_count) == (as_array.edges.tolist(), as_array.pair_count)


def test_near_duplicates_of_a_subset_reuse_the_superset_pairs_and_run_bands_on_the_pool():
    """The audit searches the kept images again: a subset of the images deduplication searched. Their close value
    pairs are the superset's pairs restricted to the subset, so the result must equal a fresh search; the bands may
    run on worker processes with the same result."""
    rng = random.Random(3)
    hashes = []
    for _ in range(300):
        h = rng.getrandbits(64)
        hashes += [h] + [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for _ in range(rng.randint(0, 3))]
    hashes += [hashes[0]] * 5
    full = dedup.near_duplicates(hashes, 4)
    assert len(full.value_pairs) > 50
    pooled = dedup.near_duplicates(hashes, 4, workers=2)
    assert (pooled.edges.tolist(), pooled.pair_count) == (full.edges.tolist(), full.pair_count)
    subset = [h for k, h in enumerate(hashes) if k % 3]
    fresh = dedup.near_duplicates(subset, 4)
    reused = dedup.near_duplicates(subset, 4, known_pairs=full.value_pairs)
    assert (reused.edges.tolist(), reused.pair_count) == (fresh.edges.tolist(), fresh.pair_count) and fresh.pair_count > 20
    assert (reused.value_pairs == fresh.value_pairs).all()


def test_release_freed_memory_returns_the_heaps_free_pages():
    """Freed blocks in the middle of glibc's heap stay resident until malloc_trim hands them back."""
    import platform

    import numpy as np

    from pathvlm.data.build import release_freed_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")

    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    blocks = [np.ones(12_000) for _ in range(2_000)]  # 96 KB each: below the mmap threshold, so on the heap
    keep = blocks[::10]  # one in ten stays: the free space lies between live blocks, not at the heap's top
    del blocks
    before = resident_mb()
    assert release_freed_memory()
    after = resident_mb()
    assert before - after > 100, (before, after)  # ~170 MB were freed between the kept blocks
    assert all(float(b[0]) == 1.0 for b in keep)
