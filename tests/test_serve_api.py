"""HTTP API of `pathvlm serve` on a real uvicorn server (tiny models): every endpoint and the malformed requests."""
from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from conftest import he_like_tile
from serve_helpers import MAX_UPLOAD, FakeOpenAI, data_url, make_gallery, png_bytes, start_server

pytest.importorskip("gradio")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_gallery(tmp_path_factory.mktemp("serve") / "gallery")


@pytest.fixture(scope="module")
def fake_backend():
    from serve.server import ServerThread

    fake = FakeOpenAI()
    with ServerThread(fake.app) as srv:
        fake.url = srv.url
        yield fake
    fake.release.set()


@pytest.fixture(scope="module")
def api(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    """The server with generation forwarded to the fake OpenAI backend."""
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm")
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        client.service = service
        yield client
    srv.stop()


def tile_url(seed=0, hue="pink") -> str:
    return data_url(png_bytes(he_like_tile(seed, hue=hue)))


def chat_body(text="What tissue is this?", image=True, **extra):
    content = [{"type": "text", "text": text}]
    if image:
        content.insert(0, {"type": "image_url", "image_url": {"url": image if isinstance(image, str) else tile_url()}})
    return {"model": "fake-vlm", "messages": [{"role": "user", "content": content}], **extra}


def local_body(*args, **extra):
    return {**chat_body(*args, **extra), "model": "pathvlm"}


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert "Traceback" not in r.text
    return body["error"]["message"]


# ---------------------------------------------------------------------- status and schema
def test_health_and_openapi(api):
    h = api.get("/health").json()
    assert h["status"] == "ok" and h["gallery_items"] == 8 and h["backend"] == "remote"
    assert set(h["queues"]) == {"embed", "generate"}
    schema = api.get("/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/classify", "/v1/search", "/health"):
        assert path in schema["paths"]
    assert {"ChatCompletionRequest", "ClassifyRequest", "SearchRequest"} <= set(schema["components"]["schemas"])
    assert api.get("/v1/models").json()["data"][0]["id"] == "fake-vlm"


# ---------------------------------------------------------------------- classify
def test_classify_typed_labels_and_preset(api):
    r = api.post("/v1/classify", json={"image": tile_url(), "labels": "tumour, stroma, fat", "top_k": 2})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["classes"] == ["tumour", "stroma", "fat"]
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-4
    assert len(out["top_k"]) == 2 and out["prediction"] == out["top_k"][0]["class"]
    assert out["top_k"][0]["probability"] == max(out["probabilities"].values())
    # bare base64 works too, and a list of labels
    raw = base64.b64encode(png_bytes(he_like_tile(0))).decode()
    same = api.post("/v1/classify", json={"image": raw, "labels": ["tumour", "stroma", "fat"]}).json()
    assert same["probabilities"] == out["probabilities"]
    from pathvlm.zeroshot import load_prompt_set

    preset = api.post("/v1/classify", json={"image": tile_url(), "preset": "lc25000_colon"}).json()
    assert preset["classes"] == list(load_prompt_set("lc25000_colon").classes)


def test_classify_bad_requests(api):
    assert "two class names" in error_of(api.post("/v1/classify", json={"image": tile_url(), "labels": "only"}), 400)
    assert "unknown task" in error_of(api.post("/v1/classify", json={"image": tile_url(), "preset": "nope"}), 400)
    assert "not both" in error_of(api.post("/v1/classify", json={"image": tile_url(), "labels": "a,b", "preset": "crc100k"}), 400)
    assert "image" in error_of(api.post("/v1/classify", json={"labels": "a,b"}), 400)


# ---------------------------------------------------------------------- search
def test_search_text_and_image(api, gallery):
    r = api.post("/v1/search", json={"text": "purple nuclei", "k": 5})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["metadata"]["licence"] == "CC0-1.0" and "image_path" not in h for h in hits)
    img = api.get(hits[0]["url"])
    assert img.status_code == 200 and img.content == (gallery / hits[0]["path"]).read_bytes()
    # an image that is in the gallery finds itself first
    q = data_url((gallery / "tile3.png").read_bytes())
    top = api.post("/v1/search", json={"image": q, "k": 3}).json()["results"][0]
    assert top["path"] == "tile3.png" and top["score"] > 0.999


def test_search_bad_requests(api):
    assert "exactly one" in error_of(api.post("/v1/search", json={"k": 3}), 400)
    assert "exactly one" in error_of(api.post("/v1/search", json={"text": "a", "image": tile_url()}), 400)
    assert "empty text" in error_of(api.post("/v1/search", json={"text": "   "}), 400)
    assert "between 1 and" in error_of(api.post("/v1/search", json={"text": "x", "k": 10_000}), 400)
    assert api.get("/v1/gallery/../../../etc/passwd").status_code == 404
    assert api.get("/v1/gallery/metadata.jsonl").status_code == 404


# ---------------------------------------------------------------------- chat (forwarded to an OpenAI-compatible backend)
def test_chat_non_stream_splits_reasoning(api, fake_backend):
    r = api.post("/v1/chat/completions", json=chat_body("Is this tumour?"))
    assert r.status_code == 200, r.text
    out = r.json()
    msg = out["choices"][0]["message"]
    assert out["object"] == "chat.completion" and out["choices"][0]["finish_reason"] == "stop"
    assert msg["reasoning_content"] == "I see 1 image(s), data URLs valid."
    assert msg["content"].startswith("Eosinophilic stroma") and "Is this tumour?" in msg["content"]
    assert out["usage"]["total_tokens"] == 18
    sent = fake_backend.requests[-1][2]
    assert sent["model"] == "fake-vlm" and sent["stream"] is False


def test_chat_stream_sse_chunks(api):
    chunks, done = [], False
    with api.stream("POST", "/v1/chat/completions", json=chat_body("Describe it.", stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunks.append(json.loads(line[6:]))
    assert done and len(chunks) > 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    reasoning = "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks)
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert reasoning == "I see 1 image(s), data URLs valid."
    assert content.startswith("Eosinophilic stroma") and "<" not in content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_chat_multi_turn_and_wrong_model(api):
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "image_url", "image_url": {"url": tile_url()}},
                                                      {"type": "text", "text": "What is it?"}]},
                         {"role": "assistant", "content": "Stroma."},
                         {"role": "user", "content": "Any tumour?"}]}
    out = api.post("/v1/chat/completions", json=body).json()
    assert "(turns: 4)" in out["choices"][0]["message"]["content"]
    assert "not served" in error_of(api.post("/v1/chat/completions", json={**body, "model": "gpt-4o"}), 404)


def test_chat_malformed_requests(api, fake_backend):
    n_before = len(fake_backend.requests)
    # remote image URLs are refused and never fetched (the fake backend would record the GET)
    remote = f"{fake_backend.url}/tile.png"
    msg = error_of(api.post("/v1/chat/completions", json=chat_body(image=remote)), 400)
    assert "never fetches" in msg
    assert "never fetches" in error_of(api.post("/v1/chat/completions", json=chat_body(image="file:///etc/passwd")), 400)
    assert "empty message" in error_of(api.post("/v1/chat/completions", json=chat_body("   ")), 400)
    assert "not an image" in error_of(api.post("/v1/chat/completions",
                                               json=chat_body(image=data_url(b"hello, not a png" * 10))), 400)
    assert "role" in error_of(api.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "hi"}]}), 400)
    assert "messages" in error_of(api.post("/v1/chat/completions", json={"messages": []}), 400)
    assert "last message" in error_of(api.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}), 400)
    assert "characters" in error_of(api.post("/v1/chat/completions", json=chat_body("x" * 30_000)), 400)
    assert len(fake_backend.requests) == n_before  # nothing bad was forwarded, nothing was fetched


def test_images_bomb_truncated_oversized(api):
    # a decompression bomb: 4000x4000 1-bit PNG, a few KB on the wire, 16 Mpixels decoded (limit 1 Mpixel)
    bomb = png_bytes(Image.new("1", (4000, 4000)))
    assert len(bomb) < 10_000
    msg = error_of(api.post("/v1/classify", json={"image": data_url(bomb), "labels": "a,b"}), 400)
    assert "pixels" in msg or "bomb" in msg
    # a truncated PNG
    whole = png_bytes(he_like_tile(1, size=96))
    msg = error_of(api.post("/v1/classify", json={"image": data_url(whole[: len(whole) // 2]), "labels": "a,b"}), 400)
    assert "truncated" in msg or "corrupt" in msg
    # a file that is not an image, and bad base64
    assert "PDF files are not accepted" in error_of(api.post("/v1/classify", json={"image": data_url(b"%PDF-1.4 " * 50),
                                                                                  "labels": "a,b"}), 400)
    assert "base64" in error_of(api.post("/v1/classify", json={"image": "data:image/png;base64,@@@@", "labels": "a,b"}), 400)
    assert "not an image" in error_of(api.post("/v1/classify", json={"image": "data:text/html;base64,PGI+", "labels": "a,b"}), 400)
    # oversized: above the decoded-image limit (413 from the payload check) ...
    big = data_url(b"\x89PNG" + b"0" * (MAX_UPLOAD + 10))
    assert "upload limit" in error_of(api.post("/v1/search", json={"image": big}), 413)
    # ... and a body far above the request limit is refused from its Content-Length, before it is read
    huge = json.dumps({"image": "A" * (MAX_UPLOAD * 2), "labels": "a,b"})
    assert "exceeds" in error_of(api.post("/v1/classify", content=huge, headers={"content-type": "application/json"}), 413)


def test_wrong_content_type_and_bad_json(api):
    r = api.post("/v1/classify", content=b"image=abc", headers={"content-type": "application/x-www-form-urlencoded"})
    assert "application/json" in error_of(r, 415)
    r = api.post("/v1/chat/completions", files={"file": ("tile.png", png_bytes(he_like_tile(0)), "image/png")})
    assert "application/json" in error_of(r, 415)
    assert error_of(api.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_busy_queue_answers_503_at_once(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    """One generation slot and no room to wait: a second request is refused at once; health stays up."""
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm", limits={"generate_concurrency": 1, "generate_max_waiting": 0})
    fake_backend.release.clear()
    results = {}
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            def slow():
                results["slow"] = client.post("/v1/chat/completions", json=chat_body("slow please"))

            t = threading.Thread(target=slow)
            t.start()
            deadline = time.monotonic() + 20
            while service.gates["generate"].stats()["running"] < 1:
                assert time.monotonic() < deadline and t.is_alive(), results
                time.sleep(0.02)
            t0 = time.monotonic()
            r = client.post("/v1/chat/completions", json=chat_body("and me?", stream=True))
            assert time.monotonic() - t0 < 2.0
            assert "busy" in error_of(r, 503)
            assert client.get("/health").json()["queues"]["generate"]["rejected"] == 1
            # classification has its own queue and still works
            assert client.post("/v1/classify", json={"image": tile_url(), "labels": "a,b"}).status_code == 200
            fake_backend.release.set()
            t.join(30)
            assert results["slow"].status_code == 200 and "slow please" in results["slow"].json()["choices"][0]["message"]["content"]
            assert client.get("/health").json()["queues"]["generate"]["completed"] == 1
    finally:
        fake_backend.release.set()
        srv.stop()


def test_request_timeout_is_504_and_stream_gets_an_error_event(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm", limits={"request_timeout_s": 1.0, "generate_concurrency": 2})
    fake_backend.release.clear()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            t0 = time.monotonic()
            assert "timed out" in error_of(c.post("/v1/chat/completions", json=chat_body("slow please")), 504)
            assert time.monotonic() - t0 < 5
            with c.stream("POST", "/v1/chat/completions", json=chat_body("slow again", stream=True)) as r:
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
            assert r.status_code == 504 or any('"timeout"' in line for line in lines), lines
            assert c.get("/health").json()["queues"]["generate"]["timed_out"] == 2
    finally:
        fake_backend.release.set()
        srv.stop()


def test_auth_token_and_basic(tiny_clip_dir, gallery, tmp_path_factory):
    srv, _ = start_server(tiny_clip_dir, gallery, tmp_path_factory, token="s3cret-token")
    body = {"text": "nuclei", "k": 2}
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/v1/search", json=body)
            assert "credential" in error_of(r, 401) and r.headers["www-authenticate"].startswith("Bearer")
            assert c.post("/v1/search", json=body, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
            assert c.post("/v1/search", json=body, headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
            assert c.get("/v1/models").status_code == 401
            assert c.get("/health").status_code == 200  # liveness stays open
            # the web app asks for a login too
            assert c.get("/config").status_code in (401, 403)
    finally:
        srv.stop()
    srv, _ = start_server(tiny_clip_dir, gallery, tmp_path_factory, auth="ana:pw-1234")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/v1/search", json=body).status_code == 401
            assert c.post("/v1/search", json=body, auth=("ana", "wrong")).status_code == 401
            assert c.post("/v1/search", json=body, auth=("ana", "pw-1234")).status_code == 200
    finally:
        srv.stop()


def test_share_refused_without_auth():
    from pathvlm.errors import PathVLMError
    from pathvlm.serving.config import ServeConfig

    with pytest.raises(PathVLMError, match="refused unless"):
        ServeConfig(share=True)
    assert ServeConfig(share=True, token="long-enough-token").share


def test_no_reasoner_and_files_outside_app_folders(tiny_clip_dir, gallery, tmp_path_factory):
    srv, _ = start_server(tiny_clip_dir, gallery, tmp_path_factory, reasoner="none")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            msg = error_of(c.post("/v1/chat/completions", json=chat_body()), 501)
            assert "--reasoner none" in msg
            assert c.get("/health").json()["reasoner"] is None
            # gradio serves the gallery, never files elsewhere
            assert c.get(f"/gradio_api/file={gallery / 'tile0.png'}").status_code == 200
            for path in ("/etc/passwd", str(gallery.parent), __file__):
                assert c.get(f"/gradio_api/file={path}").status_code in (403, 404), path
            # the web app's uploads have the same size limit
            big = c.post("/gradio_api/upload", files={"files": ("big.png", b"\x89PNG" + b"0" * (MAX_UPLOAD + 10), "image/png")})
            assert big.status_code == 413, big.text
            small = c.post("/gradio_api/upload", files={"files": ("t.png", png_bytes(he_like_tile(0)), "image/png")})
            assert small.status_code == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------------- chat on the local (tiny) reasoner
@pytest.fixture(scope="module")
def local_api(tiny_clip_dir, tiny_reasoner_dir, gallery, tmp_path_factory):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, reasoner=str(tiny_reasoner_dir),
                                limits={"max_new_tokens": 12})
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        yield client
    srv.stop()


def test_local_reasoner_stream_equals_non_stream(local_api, tiny_reasoner_dir):
    from pathvlm.chat import load_reasoner
    from pathvlm.serving.thinking import split_thinking

    body = local_body("What tissue is this?", max_tokens=50)  # capped to the server's 12
    whole = local_api.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    out = whole.json()
    assert out["model"] == tiny_reasoner_dir.name
    # the same greedy answer as the library gives for the same request
    ref = load_reasoner(str(tiny_reasoner_dir)).chat([he_like_tile(0)], [{"role": "user", "content": "What tissue is this?"}],
                                                    max_new_tokens=12)
    assert out["choices"][0]["message"]["content"] == split_thinking(ref.text)[1]
    assert out["usage"]["prompt_tokens"] == ref.prompt_tokens and out["usage"]["completion_tokens"] == ref.completion_tokens <= 12
    pieces = []
    with local_api.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                pieces.append(json.loads(line[6:])["choices"][0]["delta"].get("content", ""))
    assert len(pieces) > 2 and "".join(pieces).strip() == out["choices"][0]["message"]["content"]


def test_local_reasoner_refusals(local_api):
    assert "no image" in error_of(local_api.post("/v1/chat/completions", json=local_body(image=False)), 400)
    long_text = "word " * 1500  # under the character cap, over the prompt-token cap
    assert "tokens" in error_of(local_api.post("/v1/chat/completions", json=local_body(long_text)), 400)


# ---------------------------------------------------------------------- library pieces and the command
@pytest.mark.parametrize("cut", [1, 2, 3, 5, 7, 100])
def test_think_splitter_on_any_cut(cut):
    from pathvlm.serving.thinking import ThinkSplitter, split_thinking

    text = "<think>a < b, so\nthe </thin nuclei</think><answer>Tumour <3 cells.</answer>"
    s, events = ThinkSplitter(), []
    for i in range(0, len(text), cut):
        events += s.feed(text[i:i + cut])
    events += s.flush()
    reasoning = "".join(t for ch, t in events if ch == "reasoning")
    answer = "".join(t for ch, t in events if ch == "content")
    assert reasoning == "a < b, so\nthe </thin nuclei" and answer == "Tumour <3 cells."
    assert split_thinking("plain answer") == (None, "plain answer")


def test_admission_gate_bounds_running_and_waiting():
    from pathvlm.serving.errors import Busy, RequestTimeout
    from pathvlm.serving.limits import AdmissionGate

    gate = AdmissionGate("t", concurrency=1, max_waiting=1, queue_timeout_s=5, request_timeout_s=5)
    release = threading.Event()
    out = []
    t1 = threading.Thread(target=lambda: out.append(gate.run(lambda: release.wait(5) and "first")))
    t1.start()
    while gate.stats()["running"] < 1:
        time.sleep(0.01)
    t2 = threading.Thread(target=lambda: out.append(gate.run(lambda: "second")))
    t2.start()
    while gate.stats()["waiting"] < 1:
        time.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(Busy, match="busy"):
        gate.run(lambda: "third")
    assert time.monotonic() - t0 < 0.1
    release.set()
    t1.join(5), t2.join(5)
    assert sorted(out) == ["first", "second"] and gate.stats()["completed"] == 2 and gate.stats()["rejected"] == 1
    # a run past its deadline is a timeout for the caller; its slot stays taken until the work ends
    slow = AdmissionGate("s", 1, 0, queue_timeout_s=0.2, request_timeout_s=0.2)
    done = threading.Event()
    with pytest.raises(RequestTimeout):
        slow.run(lambda: done.wait(1))
    with pytest.raises(Busy):
        slow.run(lambda: "meanwhile")
    done.set()
    time.sleep(0.1)
    assert slow.run(lambda: "after") == "after"
    # streams: items arrive in order; closing early frees the slot
    it = gate.stream(lambda: iter(range(5)))
    assert list(it) == [0, 1, 2, 3, 4]
    assert gate.stats()["running"] == 0 and gate.stats()["waiting"] == 0


def test_serve_command_refuses_share_without_auth_and_reads_yaml(tmp_path, capsys):
    from pathvlm.cli import main
    from pathvlm.serving.config import load_serve_config

    assert main(["serve", "--share"]) == 2
    assert "refused unless --auth or --token" in capsys.readouterr().err
    assert main(["serve", "--token", "short"]) == 2
    (tmp_path / "serve.yaml").write_text("port: 9000\nreasoner: none\ngallery: tiles\nlimits:\n  max_upload_bytes: 1000\n")
    cfg = load_serve_config(tmp_path / "serve.yaml", port=9001)
    assert cfg.port == 9001 and cfg.reasoner == "none" and cfg.limits.max_upload_bytes == 1000
    assert cfg.gallery == str(tmp_path / "tiles")
    (tmp_path / "bad.yaml").write_text("limits:\n  max_uplod: 5\n")
    assert main(["serve", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown limits: max_uplod" in capsys.readouterr().err
