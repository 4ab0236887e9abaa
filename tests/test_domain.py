"""The domain check (pathvlm.domain): fitting, calibration, storage, staleness, and where it is shown."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pathvlm.domain import (DomainCheck, DomainDescription, combine, description_path, group_bootstrap_threshold,
                            ledoit_wolf, load_description, sha256_file, unchecked, weights_path, with_note)
from pathvlm.errors import PathVLMError

ROOT = Path(__file__).resolve().parent.parent


def clusters(n: int, d: int = 32, seed: int = 0, offset: float = 0.0):
    """Two tight classes of unit vectors, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(2, d, generator=torch.Generator().manual_seed(99)), dim=-1)
    labels = [("a", "b")[i % 2] for i in range(n)]
    x = centres[torch.tensor([i % 2 for i in range(n)])] + 0.05 * torch.randn(n, d, generator=g) + offset
    return torch.nn.functional.normalize(x, dim=-1), labels


def fitted(k: int = 8) -> DomainDescription:
    x, y = clusters(400)
    desc = DomainDescription.fit(x, y, model="toy", domain="toy tiles (a, b)", k=k, weights_sha256="0" * 64)
    desc.calibrate(clusters(200, seed=1)[0], target=0.97)
    return desc


def test_ledoit_wolf_shrinks_towards_a_scaled_identity():
    x = torch.randn(50, 10, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.2, 3.0, 10)
    x = x - x.mean(0)
    cov, a = ledoit_wolf(x)
    s = (x.T @ x / 50).double()
    assert 0 < a < 1
    mu = torch.trace(s) / 10
    assert torch.allclose(cov, (1 - a) * s + a * mu * torch.eye(10, dtype=s.dtype))
    sklearn = pytest.importorskip("sklearn.covariance")
    ref = sklearn.LedoitWolf(assume_centered=True).fit(x.numpy())
    assert a == pytest.approx(ref.shrinkage_, rel=1e-6)


def test_threshold_passes_the_target_share_of_held_out_tiles_and_flags_others():
    desc = fitted()
    held_out = clusters(300, seed=2)[0]
    assert 0.93 <= float((desc.scores(held_out) <= desc.threshold).float().mean()) <= 1.0
    assert desc.info["calibration_pass_rate"] >= 0.97
    far = torch.nn.functional.normalize(torch.randn(100, 32, generator=torch.Generator().manual_seed(5)), dim=-1)
    assert float((desc.scores(far) > desc.threshold).float().mean()) > 0.95
    v = desc.verdicts(torch.cat([held_out[:1], far[:1]]))
    assert v[0]["in_domain"] and v[0]["warning"] is None and v[0]["checked"]
    assert not v[1]["in_domain"]
    assert v[1]["warning"] == "toy was trained on toy tiles (a, b); this one looks unlike them, so treat the answer as unreliable."
    with pytest.raises(PathVLMError):
        desc.calibrate(held_out, target=1.5)
    with pytest.raises(PathVLMError, match="32-d"):
        desc.scores(torch.zeros(1, 16))


def grouped_scores(n_groups: int, per_group: int, gen: torch.Generator):
    """Scores whose groups (slides) differ: a per-group shift plus per-tile noise."""
    shift = torch.randn(n_groups, generator=gen, dtype=torch.float64)
    scores = shift.repeat_interleave(per_group) + 0.5 * torch.randn(n_groups * per_group, generator=gen, dtype=torch.float64)
    return scores, [g for g in range(n_groups) for _ in range(per_group)]


def test_group_bootstrap_bound_holds_on_new_groups_where_the_plain_quantile_does_not():
    gen = torch.Generator().manual_seed(0)
    held_plain, held_boot = [], []
    for trial in range(60):
        cal, groups = grouped_scores(48, 6, gen)  # as many groups as the bundled models' val split
        new, _ = grouped_scores(2000, 10, gen)  # the population of new slides
        plain = float(torch.quantile(cal, 0.95, interpolation="higher"))
        boot = group_bootstrap_threshold(cal, groups, 0.95, 0.95, resamples=200, seed=trial)
        assert boot >= plain
        held_plain.append(float((new <= plain).double().mean()) >= 0.95)
        held_boot.append(float((new <= boot).double().mean()) >= 0.95)
    # the plain 0.95 quantile of 48 slides passes 95 % of all new slides' tiles half the time (30 of 60 here),
    # the 0.95 bound 54 of 60 (a bootstrap of an upper quantile covers a little under its nominal level)
    assert sum(held_plain) / 60 < 0.7
    assert sum(held_boot) / 60 >= 0.85


def test_calibrate_with_groups_records_the_method_and_refuses_bad_input():
    x, y = clusters(400)
    desc = DomainDescription.fit(x, y, model="toy", k=8)
    held = clusters(200, seed=1)[0]
    groups = [i // 10 for i in range(200)]
    plain = desc.calibrate(held, target=0.95)
    boot = desc.calibrate(held, target=0.95, groups=groups, confidence=0.95, resamples=300)
    assert boot >= plain
    assert desc.info["method"] == "group bootstrap" and desc.info["n_groups"] == 20
    assert desc.info["calibration_pass_rate"] >= 0.95
    # the same seed gives the same threshold
    assert desc.calibrate(held, target=0.95, groups=groups, confidence=0.95, resamples=300) == boot
    with pytest.raises(PathVLMError, match="one group per held-out image"):
        desc.calibrate(held, target=0.95, groups=groups[:10], confidence=0.95)
    with pytest.raises(PathVLMError, match="confidence"):
        desc.calibrate(held, target=0.95, groups=groups, confidence=1.0)


def test_round_trip_is_exact_and_small(tmp_path):
    desc = fitted(k=16)
    path = desc.save(tmp_path / "toy.domain.safetensors")
    back = DomainDescription.load(path)
    assert path.stat().st_size < 20_000
    for name in ("means", "basis", "variances"):
        assert torch.equal(getattr(back, name), getattr(desc, name).float())
    assert (back.model, back.classes, back.domain, back.threshold, back.weights_sha256) == \
        (desc.model, desc.classes, desc.domain, desc.threshold, desc.weights_sha256)
    x = clusters(20, seed=3)[0]
    assert torch.allclose(back.scores(x), desc.scores(x))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(PathVLMError, match="not a pathvlm domain description"):
        DomainDescription.load(tmp_path / "junk.safetensors")


def test_stale_description_is_ignored_with_a_warning(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights v1")
    desc = fitted()
    desc.weights_sha256 = sha256_file(weights)
    path = desc.save(tmp_path / "w.domain.safetensors")
    warnings = []
    assert load_description("toy", path=path, weights=weights, warn=warnings.append) is not None
    assert not warnings
    weights.write_bytes(b"weights v2, retrained")
    assert load_description("toy", path=path, weights=weights, warn=warnings.append) is None
    assert len(warnings) == 1 and "ignored" in warnings[0] and "train.clip.domain" in warnings[0]


def test_models_without_a_description_are_never_flagged(tiny_clip, tiny_clip_dir):
    model, preprocess, _ = tiny_clip
    assert description_path("pathclip-nano-untrained") is None
    assert description_path("hf-hub:someone/model") is None
    check = DomainCheck.for_model(model, preprocess, str(tiny_clip_dir))
    assert not check.active
    v = check.check_features(torch.zeros(2, 8))
    assert v == [unchecked(str(tiny_clip_dir))] * 2 and v[0]["warning"] is None and v[0]["in_domain"] is None
    assert check.status() == {"model": str(tiny_clip_dir), "described": False}
    assert combine([], "m")["checked"] is False


def test_combine_and_report_note():
    desc = fitted()
    far = torch.nn.functional.normalize(torch.randn(1, 32, generator=torch.Generator().manual_seed(7)), dim=-1)
    ok, bad = desc.verdicts(torch.cat([clusters(2, seed=4)[0][:1], far]))
    both = combine([ok, bad])
    assert both["in_domain"] is False and both["warning"] == bad["warning"] and len(both["images"]) == 2
    assert combine([ok, ok])["in_domain"] is True
    md = "# Pathology report\n\n## Specimen\nx"
    assert with_note(md, ok) == md
    noted = with_note(md, bad)
    assert noted.startswith("# Pathology report\n\n> **Note:** toy was trained on") and noted.endswith("## Specimen\nx")


# ---------------------------------------------------------------------- a tiny model folder with a description
def out_of_domain_image(path: Path) -> Path:
    """A flat green square: nothing like an H&E tile."""
    from PIL import Image

    Image.new("RGB", (64, 64), (0, 255, 0)).save(path)
    return path


def run_cli(capsys, *args):
    from pathvlm.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_classify_prints_the_domain_line_only_when_flagged(described_clip_dir, tile_folder, tiny_clip_dir, tmp_path,
                                                               capsys):
    green = out_of_domain_image(tmp_path / "green.png")
    tile = sorted(Path(tile_folder).rglob("*.png"))[0]
    code, out, err = run_cli(capsys, "classify", tile, green, "--classes", "pink, purple", "--model", described_clip_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(str(tile)) and lines[1].startswith(str(green))
    assert lines[2] == "note: tiny was trained on fixture tiles; this one looks unlike them, so treat the answer as unreliable."
    assert len(lines) == 3
    js = json.loads(run_cli(capsys, "classify", green, "--classes", "pink, purple", "--model", described_clip_dir,
                            "--json")[1])
    assert js["results"][0]["domain"]["checked"] and not js["results"][0]["domain"]["in_domain"]
    code, out, err = run_cli(capsys, "classify", green, "--classes", "pink, purple", "--model", tiny_clip_dir)
    assert code == 0 and "note:" not in out and "trained on" not in out + err


def test_api_domain_field(described_clip_dir, tmp_path_factory, tmp_path):
    import httpx
    from serve_helpers import data_url, make_gallery, png_bytes
    from serve_helpers import start_server

    from conftest import he_like_tile

    from PIL import Image

    server, service = start_server(described_clip_dir, make_gallery(tmp_path / "gallery"), tmp_path_factory)
    try:
        green = data_url(png_bytes(Image.new("RGB", (64, 64), (0, 255, 0))))
        pink = data_url(png_bytes(he_like_tile(1, hue="pink")))
        with httpx.Client(base_url=server.url, timeout=60) as c:
            health = c.get("/health").json()
            assert health["domain"]["clip"]["described"] is True and health["domain"]["clip"]["trained_on"] == "fixture tiles"
            bad = c.post("/v1/classify", json={"image": green, "labels": ["pink", "purple"]}).json()["domain"]
            assert bad["checked"] and bad["in_domain"] is False and "treat the answer as unreliable" in bad["warning"]
            good = c.post("/v1/classify", json={"image": pink, "labels": ["pink", "purple"]}).json()["domain"]
            assert good["in_domain"] is True and good["warning"] is None
            hit = c.post("/v1/search", json={"image": green, "k": 2}).json()
            assert hit["domain"]["in_domain"] is False and len(hit["results"]) == 2
            assert "domain" not in c.post("/v1/search", json={"text": "pink tissue", "k": 2}).json()
            assert c.post("/v1/report", json={"image": green}).status_code == 501  # no reasoner here
    finally:
        server.stop()


def test_api_no_flag_without_a_description(tiny_clip_dir, tmp_path_factory, tmp_path):
    import httpx
    from PIL import Image
    from serve_helpers import data_url, make_gallery, png_bytes, start_server

    server, _ = start_server(tiny_clip_dir, make_gallery(tmp_path / "gallery"), tmp_path_factory)
    try:
        green = data_url(png_bytes(Image.new("RGB", (64, 64), (0, 255, 0))))
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/health").json()["domain"]["clip"]["described"] is False
            d = c.post("/v1/classify", json={"image": green, "labels": ["pink", "purple"]}).json()["domain"]
            assert d["checked"] is False and d["in_domain"] is None and d["warning"] is None
    finally:
        server.stop()


# ---------------------------------------------------------------------- the bundled description
BUNDLED = {"pathclip-nano": ("train/recipes/clip/pathclip_nano_unicl.yaml", "colon and oral mucosa", 4),
           "pathclip-nano-v3": ("train/recipes/clip/pathclip_nano_aug.yaml", "colon and oral mucosa", 4),
           "pathclip-nano-v2": ("train/recipes/clip/pathclip_nano_v2.yaml", "colon and oral mucosa", 4),
           "pathclip-nano-v1": ("train/recipes/clip/pathclip_nano.yaml", "colon", 2)}


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_description_matches_the_bundled_weights(name):
    """Fails on purpose when a bundled PathCLIP's weights change without rebuilding its description
    (python -m train.clip.domain NAME --config RECIPE, docs/models.md#the-domain-check)."""
    recipe, domain, n_classes = BUNDLED[name]
    path, weights = description_path(name), weights_path(name)
    assert path.is_file(), f"{path} is missing: build it with python -m train.clip.domain {name} --config {recipe}"
    desc = DomainDescription.load(path)
    assert desc.weights_sha256 == sha256_file(weights), f"{name}'s weights changed: rebuild its domain description"
    assert desc.model == name and desc.means.shape[1] == 256 and path.stat().st_size < 50_000
    assert desc.domain.startswith(domain + " H&E tiles") and len(desc.classes) == n_classes
    assert desc.basis.shape == (256, desc.info["k"]) and desc.info["val_pass_rate"] >= 0.95
    assert recipe in desc.info["command"]
    assert desc.info["method"] == "group bootstrap" and desc.info["target"] == 0.95 and desc.info["confidence"] == 0.95
    assert load_description(name) is not None


def test_reasoner_check_of_a_bundled_reasoner_returns(tmp_path):
    """pathvlm chat hung here: reasoner_check held the lock load_description takes (a non-re-entrant Lock)."""
    import threading

    from pathvlm.domain import _REASONER_CHECKS, reasoner_check

    _REASONER_CHECKS.clear()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("check", reasoner_check("pathvlm-nano-v1")), daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "reasoner_check('pathvlm-nano-v1') did not return within 120 s (a deadlock)"
    check = out["check"]
    assert check.active and check.description.model == "pathclip-nano-v1"
    out_of_domain_image(tmp_path / "green.png")
    verdict = check.check([str(tmp_path / "green.png")])[0]
    assert verdict["checked"] and verdict["in_domain"] is False and "pathclip-nano-v1 was trained on colon" in verdict["warning"]
    assert reasoner_check("pathvlm-nano-v1") is check  # cached: one tower per process


def test_pathvlm_nano_is_checked_with_its_own_tower():
    """Each reasoner is checked with its own tower's description: pathvlm-nano-v1 sees images through
    pathclip-nano-v1 (colon), pathvlm-nano (v2) through pathclip-nano-v2 (colon and oral mucosa)."""
    from pathvlm.domain import reasoner_tower

    assert reasoner_tower("pathvlm-nano-v1") == "pathclip-nano-v1" and reasoner_tower("pathvlm-nano-untrained") == "pathclip-nano-v1"
    assert load_description("pathclip-nano-v1").domain.startswith("colon H&E")
    assert reasoner_tower("pathvlm-nano") == reasoner_tower("pathvlm-nano-v2-untrained") == "pathclip-nano-v2"
    assert "oral" in load_description("pathclip-nano-v2").domain


def test_builder_fits_calibrates_and_reports(tiny_clip_dir, built_fixture_data, tmp_path, capsys):
    """python -m train.clip.domain on a model folder and the fixture recipe's data: the description goes inside
    the folder, tied to its weights, and the report has val/test pass rates and the --check folders."""
    from train.clip.domain import main

    folder = Path(shutil.copytree(tiny_clip_dir, tmp_path / "model"))
    odd = tmp_path / "odd"
    for sub in ("x", "y"):
        (odd / sub).mkdir(parents=True)
        out_of_domain_image(odd / sub / "green.png")
    report = tmp_path / "report.json"
    code = main([str(folder), "--config", str(ROOT / "train/recipes/clip/pathclip_nano.yaml"), "--set",
                 f"data={built_fixture_data}", "--k", "4", "--check", f"odd={odd}", "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    r = json.loads(report.read_text())
    assert r["val"]["pass_rate"] >= 0.95 and 0 <= r["test"]["pass_rate"] <= 1 and r["train"]["n"] > 0
    assert set(r["checks"]["odd"]["groups"]) == {"x", "y"} and r["checks"]["odd"]["n"] == 2
    assert r["domain"] == "tiles H&E tiles (benign colonic tissue, colon adenocarcinoma)"
    desc = load_description(str(folder))
    assert desc is not None and desc.threshold == pytest.approx(r["threshold"])
    assert DomainCheck.for_model(None, None, str(folder)).active
    assert main(["pathclip-nano-untrained", "--config", str(ROOT / "train/recipes/clip/pathclip_nano.yaml")]) == 2
    assert "nothing to describe" in capsys.readouterr().err
