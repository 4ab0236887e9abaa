import json
import subprocess
import sys

import pytest

from pathvlm.cli import COMMANDS, main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_is_fast_and_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pathvlm", "--help"], capture_output=True, text=True, check=True)
    for cmd in COMMANDS:
        assert cmd in out.stdout
    probe = "import sys, pathvlm.cli; pathvlm.cli.make_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("cmd", [["classify"], ["index", "build"], ["search"], ["gallery", "build"], ["export"],
                                 ["demo"], ["models"], ["tasks"], ["index", "info"]])
def test_each_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--help"])
    assert e.value.code == 0
    assert "usage: pathvlm" in capsys.readouterr().out


def test_classify_json(capsys, tiny_clip_dir, tile_folder):
    code, out, _ = run(capsys, "classify", str(tile_folder / "a"), "--classes", "tumour|carcinoma, stroma",
                       "--model", str(tiny_clip_dir), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["classes"] == ["tumour", "stroma"] and len(data["results"]) == 3
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in data["results"])


def test_classify_text_output_and_task(capsys, tiny_clip_dir, tile_folder):
    code, out, _ = run(capsys, "classify", str(tile_folder / "a" / "tile1.png"), "--task", "crc100k",
                       "--model", str(tiny_clip_dir), "--top-k", "2")
    assert code == 0 and out.startswith(str(tile_folder / "a" / "tile1.png") + ": ") and out.count(",") == 1


@pytest.mark.parametrize("make_bad,match", [
    (lambda d: d / "missing.png", "no such file"),
    (lambda d: (d / "x.png").write_text("text") and d / "x.png", "not an image"),
    (lambda d: (d / "e").mkdir() or d / "e", "no images found"),
])
def test_classify_bad_input_is_a_message_not_a_traceback(capsys, tiny_clip_dir, tmp_path, make_bad, match):
    bad = make_bad(tmp_path)
    code, out, err = run(capsys, "classify", str(bad), "--classes", "a,b", "--model", str(tiny_clip_dir))
    assert code == 2 and match in err and "Traceback" not in err


def test_unknown_model_and_task(capsys, tile_folder):
    code, _, err = run(capsys, "classify", str(tile_folder), "--task", "nope")
    assert code == 2 and "unknown task 'nope'" in err
    code, _, err = run(capsys, "classify", str(tile_folder), "--classes", "a,b", "--model", "hf-hub:org/none")
    assert code == 2 and "local-dir:DIR" in err


def test_index_build_then_search(capsys, tiny_clip_dir, tile_folder, tmp_path):
    out_dir = tmp_path / "idx"
    code, out, _ = run(capsys, "index", "build", str(tile_folder), "--out", str(out_dir),
                       "--model", str(tiny_clip_dir), "--workers", "0")
    assert code == 0 and "indexed 6 images" in out
    code, out, _ = run(capsys, "search", str(out_dir), "tumour nest", "-k", "3", "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["file"].startswith(str(tile_folder)) for h in hits)
    code, out, _ = run(capsys, "search", str(out_dir), "--image", str(tile_folder / "b" / "tile0.png"), "-k", "1")
    assert code == 0 and "b/tile0.png" in out
    code, out, _ = run(capsys, "index", "info", str(out_dir))
    assert json.loads(out)["count"] == 6
    code, _, err = run(capsys, "search", str(out_dir))
    assert code == 2 and "either a text query or --image" in err


def test_search_with_other_model_is_refused(capsys, tiny_clip_dir, tiny_vit_open_clip_dir, tile_folder, tmp_path):
    run(capsys, "index", "build", str(tile_folder), "--out", str(tmp_path / "idx"), "--model", str(tiny_clip_dir),
        "--workers", "0")
    code, _, err = run(capsys, "search", str(tmp_path / "idx"), "x", "--model", str(tiny_vit_open_clip_dir))
    assert code == 2 and "was built with model" in err


def test_export_round_trip(capsys, tiny_vit_open_clip_dir, tmp_path):
    code, out, _ = run(capsys, "export", "--model", f"local-dir:{tiny_vit_open_clip_dir}", str(tmp_path / "copy"))
    assert code == 0 and (tmp_path / "copy" / "pathvlm.json").exists()


def test_models_and_tasks(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "pathclip-nano" in out and "hf-hub:wisdomik/QuiltNet-B-32" in out
    code, out, _ = run(capsys, "tasks")
    assert code == 0 and "crc100k" in out and "sicapv2" in out
    code, out, _ = run(capsys, "tasks", "crc100k")
    assert "adipose" in out and "22 templates" in out


def test_index_build_part_size_saves_parts_to_resume_from(capsys, tiny_clip_dir, tile_folder, tmp_path, monkeypatch):
    from pathvlm.retrieval import index as index_mod

    real_save = index_mod._save_part
    saved = []

    def crash_after_first_part(path, *args, **kwargs):
        if saved:
            raise KeyboardInterrupt("simulated crash")
        saved.append(path)
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(index_mod, "_save_part", crash_after_first_part)
    argv = ["index", "build", str(tile_folder), "--out", str(tmp_path / "idx"), "--model", str(tiny_clip_dir),
            "--workers", "0", "--part-size", "2"]
    assert run(capsys, *argv)[0] == 130
    with index_mod.np.load(saved[0]) as part:
        assert len(part["ids"]) == 2  # 6 images, a part every 2: progress was saved
    monkeypatch.setattr(index_mod, "_save_part", real_save)
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "indexed 6 images" in out
    with pytest.raises(SystemExit) as e:
        main(argv[:-1] + ["0"])
    assert e.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_classify_png_with_oversized_text_chunk_is_an_error_not_a_traceback(capsys, tiny_clip_dir, tmp_path):
    import struct
    import zlib

    from conftest import he_like_tile

    tile = tmp_path / "tile.png"
    he_like_tile(0).save(tile)
    data = tile.read_bytes()
    payload = b"Comment\x00\x00" + zlib.compress(b"A" * 20_000_000)
    chunk = struct.pack(">I", len(payload)) + b"zTXt" + payload + struct.pack(">I", zlib.crc32(b"zTXt" + payload) & 0xFFFFFFFF)
    tile.write_bytes(data[:33] + chunk + data[33:])
    code, _, err = run(capsys, "classify", str(tile), "--classes", "a,b", "--model", str(tiny_clip_dir))
    assert code == 2 and "oversized metadata" in err and "Traceback" not in err
