"""Issue 14: `pathvlm serve` attacked the way a hostile client would, on a real uvicorn server (tiny models).

1. gradio file objects naming server paths, on every named gradio endpoint that takes a file, image or
   chat history, through /gradio_api/call and the queue join route, with and without auth.
2. memory: images counted and sized before any decode; decoded in the slot; a pixel budget over the queue.
3. classify work: prompt cap, class-embedding cache, timeouts that free the slot.
4. presets are shipped names only.
5. clients that disconnect cancel their work (API non-stream and stream, gradio queue).
6. bad input that used to give 500s, and the API's error envelope, 413, 405.
7. damaged JPEGs, formats, failed-login throttle, header and body read timeouts.
"""
from __future__ import annotations

import base64
import io
import json
import socket
import struct
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import he_like_tile
from serve_helpers import FakeOpenAI, data_url, make_gallery, png_bytes, start_server

pytest.importorskip("gradio")
pytest.importorskip("faiss")

TOKEN = "s3cret-token-14"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return make_gallery(tmp_path_factory.mktemp("sec") / "gallery")


@pytest.fixture(scope="module")
def fake_backend():
    from serve.server import ServerThread

    fake = FakeOpenAI()
    with ServerThread(fake.app) as srv:
        fake.url = srv.url
        yield fake
    fake.release.set()


@pytest.fixture(scope="module")
def planted():
    """Secrets planted where an attacker would look: the temp dir (gradio's own allowed area) and /etc."""
    tmp = Path(tempfile.gettempdir())
    marker = f"PATHVLM-SECRET-{uuid.uuid4().hex}"
    text = tmp / f"pathvlm-secret-{uuid.uuid4().hex[:8]}.txt"
    text.write_text(marker)
    image = tmp / f"pathvlm-secret-{uuid.uuid4().hex[:8]}.png"
    image.write_bytes(png_bytes(he_like_tile(5)))
    preset = tmp / f"pathvlm-preset-{uuid.uuid4().hex[:8]}.json"
    preset.write_text(json.dumps({"name": marker, "classes": {marker: [marker], "b": ["b"]}, "templates": ["{}"]}))
    yield {"marker": marker, "text": text, "image": image, "preset": preset}
    for p in (text, image, preset):
        p.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def open_server(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm")
    yield srv, service
    srv.stop()


@pytest.fixture(scope="module")
def token_server(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm", token=TOKEN)
    yield srv, service
    srv.stop()


def error_of(r, status):
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text
    return r.json()["error"]["message"]


def tile_url(seed=0) -> str:
    return data_url(png_bytes(he_like_tile(seed)))


def chat_body(text="What tissue is this?", image=True, **extra):
    content = [{"type": "text", "text": text}]
    if image:
        content.insert(0, {"type": "image_url", "image_url": {"url": image if isinstance(image, str) else tile_url()}})
    return {"model": "fake-vlm", "messages": [{"role": "user", "content": content}], **extra}


# ---------------------------------------------------------------------- 1. gradio file references
def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def hostile_values(planted) -> dict[str, dict]:
    """name -> (file-like value, chat-history value) naming server files outside the upload cache."""
    from gradio.utils import get_upload_folder

    cache = Path(get_upload_folder())
    paths = {"secret in tmp": planted["text"], "secret image": planted["image"], "/etc/passwd": "/etc/passwd",
             "missing file": Path(tempfile.gettempdir()) / "no-such-file-14.png",
             "traversal out of the cache": cache / ".." / planted["text"].name,
             "url": "http://127.0.0.1:9/x.png"}
    out = {}
    for name, p in paths.items():
        out[f"FileData {name}"] = file_data(p)
    out["FileData without meta"] = {"path": str(planted["image"])}
    out["component message (file)"] = {"type": "component", "component": "file", "value": {"path": str(planted["text"])},
                                       "constructor_args": {}, "props": {}}
    out["component message (image)"] = {"type": "component", "component": "image",
                                        "value": {"path": str(planted["image"])}, "constructor_args": {}, "props": {}}
    return out


def as_history(value) -> list:
    if value.get("type") == "component":
        content = [value]
    else:
        content = [{"type": "file", "file": value, "alt_text": None}]
    return [{"role": "user", "metadata": None, "options": None, "content": content},
            {"role": "user", "metadata": None, "options": None, "content": [{"type": "text", "text": "what is it?"}]}]


def file_endpoints(client) -> dict[str, list]:
    """Every named gradio endpoint taking a file, image or chat history: name -> its parameter list."""
    info = client.get("/gradio_api/info").json()["named_endpoints"]
    kinds = {"Image", "File", "Chatbot", "Gallery", "Video", "Audio", "Model3D", "ImageEditor", "MultimodalTextbox"}
    return {name.lstrip("/"): ep["parameters"] for name, ep in info.items()
            if any(p["component"] in kinds for p in ep["parameters"])}


def distinct_handlers(endpoints: dict) -> dict:
    """One endpoint per handler: gradio names a handler bound to several triggers respond, respond_1, ...
    (benchmarks/adversarial_serve.py tries every name)."""
    import re

    return {name: params for name, params in endpoints.items() if not re.search(r"_\d+$", name)}


def default_args(params, **by_component) -> list:
    """Arguments for an endpoint from its parameter list: ``by_component`` (e.g. Image=...) fills those
    components, the rest get harmless values (so the tests follow the app when it gains an input)."""
    values = {"Slider": 3, "Number": 3, "Dropdown": "(type class names)", "Chatbot": [], "Textbox": "a, b",
              **by_component}
    return [values.get(p["component"]) for p in params]


def sse_text(client, name, data) -> str:
    r = client.post(f"/gradio_api/call/{name}", json={"data": data})
    if r.status_code != 200:
        return r.text
    event = r.json()["event_id"]
    return client.get(f"/gradio_api/call/{name}/{event}", timeout=60).text


def queue_join_text(client, fn_index, data) -> str:
    session = uuid.uuid4().hex
    r = client.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                    "event_data": None, "trigger_id": None})
    if r.status_code != 200:
        return r.text
    out = []
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as s:
        for line in s.iter_lines():
            out.append(line)
            if '"msg": "process_completed"' in line or '"msg":"process_completed"' in line:
                break
    return "\n".join(out)


def leaked(client, text: str, planted) -> list[str]:
    """Anything in a response that gives the attacker a file: the marker, or a /file= URL serving it."""
    import re

    found = [planted["marker"]] if planted["marker"] in text else []
    if "root:x:0:0" in text:
        found.append("/etc/passwd content")
    for url in set(re.findall(r"/gradio_api/file=[^\"\s\\\\]+", text)):
        body = client.get(url).content
        if planted["marker"].encode() in body or b"root:x:0:0" in body or body == planted["image"].read_bytes():
            found.append(url)
    return found


def error_texts(text: str) -> list[str]:
    msgs = []
    for line in text.splitlines():
        if line.startswith("data:"):
            try:
                value = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(value, dict) and value.get("msg") == "process_completed":
                value = value.get("output", {}).get("error")
            elif isinstance(value, dict):
                value = value.get("error")
            if isinstance(value, str):
                msgs.append(value)
    return msgs


def login(client) -> None:
    r = client.post("/login", data={"username": "anyone", "password": TOKEN})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("auth", [False, True], ids=["no auth", "token auth + web login"])
def test_gradio_endpoints_never_read_server_files(auth, request, planted):
    srv, _ = request.getfixturevalue("token_server" if auth else "open_server")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        if auth:
            assert c.post("/gradio_api/call/classify", json={"data": [None, "x", "a,b", 3]}).status_code in (401, 403)
            login(c)
        endpoints = file_endpoints(c)
        assert {"classify", "search_image", "make_report", "respond", "drop_last_answer", "add_user_message"} <= set(endpoints)
        fn_index = {d["api_name"]: d["id"] for d in c.get("/config").json()["dependencies"]}
        errors_by_route: dict[str, set] = {}
        for name, params in distinct_handlers(endpoints).items():
            for label, value in hostile_values(planted).items():
                for i, p in enumerate(params):
                    if p["component"] not in ("Image", "File", "Chatbot"):
                        continue
                    data = default_args(params)
                    data[i] = as_history(value) if p["component"] == "Chatbot" else value
                    for route, text in (("call", sse_text(c, name, data)), ("queue", queue_join_text(c, fn_index[name], data))):
                        where = f"{route} /{name} {p['label']} <- {label}"
                        assert not leaked(c, text, planted), where
                        assert "error" in text, (where, text[:300])
                        errors = error_texts(text)
                        assert errors and all("not an upload to this server" in e for e in errors), (where, text[:500])
                        errors_by_route.setdefault(route, set()).update(errors)
        # one message whatever the path: no oracle for which files exist
        assert all(len(msgs) == 1 for msgs in errors_by_route.values()), errors_by_route


def test_legitimate_uploads_still_work(open_server):
    srv, _ = open_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        up = c.post("/gradio_api/upload", files={"files": ("t.png", png_bytes(he_like_tile(0)), "image/png")})
        assert up.status_code == 200, up.text
        path = up.json()[0]
        params = file_endpoints(c)["classify"]
        text = sse_text(c, "classify", default_args(params, Image=file_data(path), Textbox="tumour, stroma"))
        assert "event: complete" in text and "Prediction" in text, text[:500]


# ---------------------------------------------------------------------- 2. memory per request
def flat_jpeg(w, h) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (230, 190, 215)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


@pytest.fixture
def decode_counter(monkeypatch):
    """Counts Pillow's header reads (Image.open) and pixel decodes (ImageFile.load), whoever calls them."""
    from PIL import ImageFile

    calls = {"decode": 0, "header": 0}
    real_open, real_load = Image.open, ImageFile.ImageFile.load

    def counting_open(*a, **k):
        calls["header"] += 1
        return real_open(*a, **k)

    def counting_load(self):
        if getattr(self, "_im", None) is None:
            calls["decode"] += 1
        return real_load(self)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


def test_too_many_images_refused_before_any_is_read(open_server, decode_counter):
    srv, _ = open_server
    img = data_url(flat_jpeg(600, 400), "image/jpeg")
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}}] * 40
                          + [{"type": "text", "text": "hi"}]}]}
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert "40 images given; the limit is 1" in error_of(c.post("/v1/chat/completions", json=body), 400)
    assert decode_counter == {"decode": 0, "header": 0}


def test_waiting_requests_hold_no_decoded_images_and_a_pixel_budget_caps_the_queue(
        tiny_clip_dir, gallery, tmp_path_factory, fake_backend, decode_counter):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm",
                                limits={"generate_concurrency": 1, "generate_max_waiting": 4,
                                        "max_image_pixels": 1_000_000, "max_queued_pixels": 1_600_000})
    decode_counter.update(decode=0, header=0)  # count from here (the gallery index was built above)
    fake_backend.release.clear()
    big = data_url(flat_jpeg(1000, 800), "image/jpeg")  # 0.8 Mpixels each
    results = []
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            threads = [threading.Thread(target=lambda: results.append(c.post("/v1/chat/completions",
                                                                             json=chat_body("slow", image=big))))
                       for _ in range(2)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 20
            while service.gates["generate"].stats()["running"] + service.gates["generate"].stats()["waiting"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(0.3)
            assert decode_counter["decode"] == 1  # the running request decoded its image, the waiting one did not
            assert service.pixels.stats()["pixels_in_use"] == 1_600_000
            r = c.post("/v1/chat/completions", json=chat_body("and me", image=big))
            assert "Mpixels" in error_of(r, 503)
            assert c.get("/health").json()["pixels"]["refused"] == 1
            fake_backend.release.set()
            for t in threads:
                t.join(30)
            assert [r.status_code for r in results] == [200, 200]
            assert service.pixels.stats()["pixels_in_use"] == 0
    finally:
        fake_backend.release.set()
        srv.stop()


def test_header_pixel_count_is_checked_before_decoding(open_server, decode_counter):
    srv, _ = open_server
    too_big = data_url(flat_jpeg(1500, 1000), "image/jpeg")  # 1.5 Mpixels, the test server's cap is 1
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert "exceeds the limit of 1000000 pixels" in error_of(c.post("/v1/classify", json={"image": too_big,
                                                                                          "labels": "a,b"}), 400)
    assert decode_counter["decode"] == 0


# ---------------------------------------------------------------------- 3. classify work
def test_classify_prompt_cap_and_class_cache(open_server):
    srv, service = open_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        many = [f"c{i}" + "|a" * 98 for i in range(3)]  # 99 names each within 200 characters: 6,534 prompts
        msg = error_of(c.post("/v1/classify", json={"image": tile_url(), "labels": many}), 400)
        assert "prompts" in msg and "limit is 2048" in msg
        before = service.class_cache.stats()
        first = c.post("/v1/classify", json={"image": tile_url(), "labels": "tumour q, stroma q, fat q"}).json()
        mid = service.class_cache.stats()
        again = c.post("/v1/classify", json={"image": tile_url(), "labels": "stroma q, tumour q, mucin q"}).json()
        after = service.class_cache.stats()
    assert mid["misses"] - before["misses"] == 3
    assert after["hits"] - mid["hits"] == 2 and after["misses"] - mid["misses"] == 1  # only "mucin q" was embedded
    assert first["probabilities"]["tumour q"] > 0 and set(again["classes"]) == {"stroma q", "tumour q", "mucin q"}


def test_classify_timeout_stops_the_work_and_frees_the_slot(tiny_clip_dir, gallery, tmp_path_factory, monkeypatch):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory,
                                limits={"request_timeout_s": 1.0, "embed_concurrency": 1, "embed_max_waiting": 0})
    calls = {"n": 0}
    real = service.model.encode_text

    def slow_encode_text(*a, **k):  # every batch of prompts takes 0.4 s: the request would need ~3 s
        calls["n"] += 1
        time.sleep(0.4)
        return real(*a, **k)

    monkeypatch.setattr(service.model, "encode_text", slow_encode_text)
    labels = [f"tissue type {i}|kind {i}|sort {i}" for i in range(30)]  # 30 x 3 x 22 = 1980 prompts, 8 batches
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            t0 = time.monotonic()
            assert "timed out" in error_of(c.post("/v1/classify", json={"image": tile_url(), "labels": labels}), 504)
            deadline = t0 + 2.5
            while service.gates["embed"].stats()["running"]:
                assert time.monotonic() < deadline, "the slot was kept after the timeout"
                time.sleep(0.05)
            assert c.post("/v1/search", json={"text": "nuclei", "k": 2}).status_code == 200
            stats = c.get("/health").json()["queues"]["embed"]
            assert stats["timed_out"] == 1 and stats["completed"] == 1 and stats["running"] == 0
        assert calls["n"] <= 5  # stopped between batches, well before its 8
    finally:
        srv.stop()


def test_gate_outcomes_cancel_and_timeout():
    from pathvlm.cancel import CancelToken, Cancelled, check_cancelled
    from pathvlm.serving.errors import RequestTimeout
    from pathvlm.serving.limits import AdmissionGate

    gate = AdmissionGate("t", concurrency=1, max_waiting=2, queue_timeout_s=5, request_timeout_s=0.3)
    steps = []

    def long_work():
        for i in range(100):
            check_cancelled()
            steps.append(i)
            time.sleep(0.02)

    t0 = time.monotonic()
    with pytest.raises(RequestTimeout):
        gate.run(long_work)
    while gate.stats()["running"]:
        time.sleep(0.01)
    assert time.monotonic() - t0 < 0.6 and len(steps) < 30
    # a waiting request whose client goes away leaves the line at once
    release = threading.Event()
    holder = threading.Thread(target=lambda: gate.run(lambda: release.wait(5), timeout_s=5))
    holder.start()
    while not gate.stats()["running"]:
        time.sleep(0.01)
    token = CancelToken()
    ticket = gate.admit(token)
    errors = []
    waiter = threading.Thread(target=lambda: errors.append(pytest.raises(Cancelled, ticket.run, lambda: "never")))
    waiter.start()
    time.sleep(0.1)
    assert gate.stats()["waiting"] == 1
    token.cancel("disconnected")
    waiter.join(2)
    assert gate.stats()["waiting"] == 0 and gate.stats()["cancelled"] == 1
    release.set()
    holder.join(5)
    s = gate.stats()
    assert (s["timed_out"], s["cancelled"], s["completed"], s["failed"]) == (1, 1, 1, 0)
    # an abandoned stream stops its producer and frees the slot
    produced = []

    def slow_items():
        for i in range(100):
            produced.append(i)
            yield i
            time.sleep(0.02)

    it = gate.stream(slow_items, timeout_s=5)
    assert next(it) == 0
    it.close()
    while gate.stats()["running"]:
        time.sleep(0.01)
    assert len(produced) < 20 and gate.stats()["cancelled"] == 2


def test_gate_hands_slots_over_in_arrival_order():
    from pathvlm.serving.limits import AdmissionGate

    gate = AdmissionGate("fifo", concurrency=1, max_waiting=5, queue_timeout_s=10, request_timeout_s=10)
    release, order = threading.Event(), []
    holder = threading.Thread(target=lambda: gate.run(lambda: release.wait(10)))
    holder.start()
    while not gate.stats()["running"]:
        time.sleep(0.01)
    waiters = []
    for i in range(4):
        waiters.append(threading.Thread(target=lambda i=i: gate.run(lambda: order.append(i))))
        waiters[-1].start()
        while gate.stats()["waiting"] < i + 1:
            time.sleep(0.01)
        time.sleep(0.12)  # past a polling interval: an unfair semaphore would let late waiters overtake
    release.set()
    for t in [holder, *waiters]:
        t.join(10)
    assert order == [0, 1, 2, 3]


# ---------------------------------------------------------------------- 4. presets
def test_preset_is_a_shipped_name_only(open_server, planted):
    srv, _ = open_server
    from pathvlm.zeroshot import list_prompt_sets

    rel = "../" * 12 + str(planted["preset"]).lstrip("/")
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for preset in (str(planted["preset"]), rel, str(planted["preset"].with_suffix("")), tempfile.gettempdir(),
                       "crc100k.json", "/etc/passwd", "x" * 5000):
            r = c.post("/v1/classify", json={"image": tile_url(), "preset": preset})
            msg = error_of(r, 400)
            assert planted["marker"] not in r.text and "unknown task" in msg
            assert all(name in msg for name in list_prompt_sets())
        assert c.post("/v1/classify", json={"image": tile_url(), "preset": "lc25000_colon"}).status_code == 200


# ---------------------------------------------------------------------- 5. disconnects
def wait_until(pred, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_disconnect_while_queued_cancels_the_request(tiny_clip_dir, gallery, tmp_path_factory, fake_backend):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, backend_url=fake_backend.url,
                                backend_model="fake-vlm", limits={"generate_concurrency": 1, "generate_max_waiting": 4})
    gate = service.gates["generate"]
    fake_backend.release.clear()
    try:
        holder = threading.Thread(target=lambda: httpx.post(srv.url + "/v1/chat/completions",
                                                            json=chat_body("slow"), timeout=60))
        holder.start()
        wait_until(lambda: gate.stats()["running"] == 1, what="the first request to run")
        for stream in (False, True):
            with pytest.raises(httpx.ReadTimeout):  # the client gives up while its request waits for the slot
                httpx.post(srv.url + "/v1/chat/completions", json=chat_body("queued", stream=stream), timeout=0.7)
            wait_until(lambda: gate.stats()["waiting"] == 0, timeout=3, what="the abandoned request to leave the line")
        assert gate.stats()["cancelled"] == 2 and gate.stats()["running"] == 1
        fake_backend.release.set()
        holder.join(30)
        health = httpx.get(srv.url + "/health").json()["queues"]["generate"]
        assert (health["completed"], health["cancelled"]) == (1, 2)
    finally:
        fake_backend.release.set()
        srv.stop()


@pytest.fixture(scope="module")
def local_server(tiny_clip_dir, tiny_reasoner_dir, gallery, tmp_path_factory):
    srv, service = start_server(tiny_clip_dir, gallery, tmp_path_factory, reasoner=str(tiny_reasoner_dir),
                                limits={"max_new_tokens": 400})
    yield srv, service
    srv.stop()


@pytest.fixture
def slow_tokens(monkeypatch):
    """Every generated token of the local reasoner takes 50 ms, so even 128 tokens would take over 6 s."""
    from pathvlm.vlm import decode

    produced = {"n": 0}
    real_pick = decode._pick

    def pick(*a, **k):
        produced["n"] += 1
        time.sleep(0.05)
        return real_pick(*a, **k)

    monkeypatch.setattr(decode, "_pick", pick)
    return produced


def local_chat(**extra):
    return {**chat_body("Describe it.", **extra), "model": "pathvlm", "max_tokens": 400}


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_disconnect_while_running_stops_generation(local_server, slow_tokens, stream):
    srv, service = local_server
    gate = service.gates["generate"]
    before = gate.stats().get("cancelled", 0)
    if stream:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=local_chat(stream=True), timeout=30) as r:
            for line in r.iter_lines():
                if '"content"' in line and '""' not in line:
                    break  # the first real piece arrived: go away
    else:
        wait_started = threading.Thread(target=lambda: pytest.raises(
            httpx.ReadTimeout, httpx.post, srv.url + "/v1/chat/completions", json=local_chat(), timeout=1.0))
        wait_started.start()
        wait_started.join(10)
    t_gone = time.monotonic()
    wait_until(lambda: gate.stats()["running"] == 0, timeout=3, what="generation to stop")
    assert time.monotonic() - t_gone < 3
    assert gate.stats()["cancelled"] == before + 1
    assert slow_tokens["n"] < 80  # far from the 400 tokens the client asked for (and any model cap)


def read_quietly(response) -> None:
    try:
        for _ in response.iter_lines():
            pass
    except Exception:  # closed under it
        pass


def test_gradio_queue_disconnect_cancels_the_request(local_server, slow_tokens):
    """The web app's chat (the queue join route the browser uses): closing the tab cancels the answer,
    first while it waits behind another request, then while it is generating."""
    srv, service = local_server
    gate = service.gates["generate"]
    history = [{"role": "user", "metadata": None, "options": None, "content": [{"type": "text", "text": "Describe it."}]}]
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        up = c.post("/gradio_api/upload", files={"files": ("t.png", png_bytes(he_like_tile(0)), "image/png")})
        image = file_data(up.json()[0])
        fn_index = {d["api_name"]: d["id"] for d in c.get("/config").json()["dependencies"]}["respond"]
        data = default_args(file_endpoints(c)["respond"], Chatbot=history, Image=image, Textbox="")
        for state in ("waiting", "running"):
            holder = None
            if state == "waiting":  # an API request holds the only slot for a while, then gives up
                holder = threading.Thread(target=lambda: pytest.raises(
                    httpx.ReadTimeout, httpx.post, srv.url + "/v1/chat/completions", json=local_chat(), timeout=6))
                holder.start()
                wait_until(lambda: gate.stats()["running"] == 1, what="the holder to run")
            before = gate.stats().get("cancelled", 0)
            session = uuid.uuid4().hex
            r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                       "session_hash": session, "trigger_id": None})
            assert r.status_code == 200, r.text
            with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as s:
                reader = threading.Thread(target=read_quietly, args=(s,), daemon=True)  # the open browser tab
                reader.start()
                wait_until(lambda: gate.stats()[state] == 1, timeout=10, what=f"the web request to be {state}")
            # the browser tab is gone
            if state == "waiting":
                wait_until(lambda: gate.stats()["waiting"] == 0, timeout=5, what="the web request to leave the line")
                assert gate.stats()["running"] == 1  # the holder is untouched
                assert gate.stats().get("cancelled") == before + 1
                holder.join(15)
                wait_until(lambda: gate.stats()["running"] == 0, timeout=5, what="the holder to be cancelled")
            else:
                wait_until(lambda: gate.stats()["running"] == 0, timeout=8, what="generation to stop")
                assert gate.stats().get("cancelled") == before + 1
    assert slow_tokens["n"] < 250  # the holder ran about 6 s, the web request about 1 s


# ---------------------------------------------------------------------- 6. bad input: 4xx, never 500
def png_with_chunk(kind: bytes) -> bytes:
    png = png_bytes(he_like_tile(0))
    payload = (b"Comment\x00\x00" if kind == b"zTXt" else b"icc\x00\x00") + zlib.compress(b"A" * 20_000_000)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def test_bad_inputs_are_400s_not_500s(open_server, local_server):
    srv, _ = open_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        for kind in (b"zTXt", b"iCCP"):
            r = c.post("/v1/classify", json={"image": data_url(png_with_chunk(kind)), "labels": "a,b"})
            assert "oversized metadata" in error_of(r, 400)
        assert "seed" in error_of(c.post("/v1/chat/completions", json=chat_body(seed=2**70)), 400)
        raw = json.dumps(chat_body("x")).replace('"x"', '"bad \\ud800 text"').encode()
        r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert "surrogate" in error_of(r, 400)
        raw = b'{"image": "' + tile_url().encode() + b'", "labels": ["a", "\\udc80b"]}'
        assert "surrogate" in error_of(c.post("/v1/classify", content=raw, headers={"content-type": "application/json"}), 400)
        raw = b'{"text": "\\ud83d nuclei"}'
        assert "surrogate" in error_of(c.post("/v1/search", content=raw, headers={"content-type": "application/json"}), 400)
    lsrv, _ = local_server
    with httpx.Client(base_url=lsrv.url, timeout=60) as c:
        for t in (1e-39, 1e-6, 0.004):  # greedy below 1e-5, raised to 0.01 above
            r = c.post("/v1/chat/completions", json={**local_chat(), "max_tokens": 4, "temperature": t, "seed": 3})
            assert r.status_code == 200, (t, r.text)


def test_api_errors_use_the_envelope_413_405_404(open_server):
    srv, _ = open_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        def chunks():
            for _ in range(80):  # 800 kB, over the test server's 529 kB body limit
                yield b"x" * 10_000

        r = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})  # chunked, no length
        assert "exceeds the limit" in error_of(r, 413)
        r = c.post("/v1/classify", content=b'{"image": "\xff\xfe", "labels": "a,b"}', headers={"content-type": "application/json"})
        assert "UTF-8" in error_of(r, 400)
        deep = b'{"labels": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        assert "nested too deeply" in error_of(c.post("/v1/classify", content=deep,
                                                      headers={"content-type": "application/json"}), 400)
        for method, path, allowed in (("GET", "/v1/classify", "POST"), ("DELETE", "/v1/chat/completions", "POST"),
                                      ("POST", "/v1/models", "GET"), ("PUT", "/health", "GET")):
            r = c.request(method, path, json={} if method != "GET" else None)
            assert "not allowed" in error_of(r, 405) and allowed in r.headers["allow"], (method, path)
        assert "no API route" in error_of(c.get("/v1/nope"), 404)
        assert c.get("/health").status_code == 200


# ---------------------------------------------------------------------- 7. damaged images, formats, logins, timeouts
def test_lying_jpeg_and_other_formats_are_refused_by_name(open_server):
    srv, _ = open_server
    liar = bytearray(flat_jpeg(224, 224))
    sof = liar.find(b"\xff\xc0")
    liar[sof + 5:sof + 9] = struct.pack(">HH", 1000, 900)  # the header claims 900x1000 (under the pixel cap)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        msg = error_of(c.post("/v1/classify", json={"image": data_url(bytes(liar), "image/jpeg"), "labels": "a,b"}), 400)
        assert "damaged JPEG" in msg
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto showpage\n"
        msg = error_of(c.post("/v1/classify", json={"image": base64.b64encode(eps).decode(), "labels": "a,b"}), 400)
        assert "EPS" in msg and "not accepted" in msg and "ghostscript" not in msg.lower()


def test_failed_logins_are_throttled(tiny_clip_dir, gallery, tmp_path_factory):
    srv, _ = start_server(tiny_clip_dir, gallery, tmp_path_factory, token=TOKEN)  # default: 5 failures per 300 s
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            bad = {"Authorization": "Bearer wrong-token"}
            assert [c.get("/v1/models", headers=bad).status_code for _ in range(5)] == [401] * 5
            r = c.get("/v1/models", headers=bad)
            assert "too many failed logins" in error_of(r, 429) and int(r.headers["retry-after"]) > 200
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 429  # even right
            other = {"X-Forwarded-For": "203.0.113.9"}  # another client (uvicorn trusts a local proxy's header)
            assert c.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}", **other}).status_code == 200
            # the web login counts the same way, per client
            web = {"X-Forwarded-For": "203.0.113.10"}
            codes = [c.post("/login", data={"username": "u", "password": f"guess{i}"}, headers=web).status_code
                     for i in range(7)]
            assert codes[:5] == [400] * 5 and codes[5:] == [429, 429], codes
            assert c.post("/login", data={"username": "u", "password": TOKEN}, headers=web).status_code == 429
            logins = c.get("/health").json()["logins"]
            assert logins["blocked_clients"] == 2 and logins["failed_logins"] == 10
    finally:
        srv.stop()


def test_slow_headers_and_slow_bodies_are_cut_off(tiny_clip_dir, gallery, tmp_path_factory):
    srv, _ = start_server(tiny_clip_dir, gallery, tmp_path_factory,
                          limits={"header_timeout_s": 1.0, "body_timeout_s": 1.0})
    try:
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:  # slowloris: a header byte at a time
            s.settimeout(0.25)
            t0 = time.monotonic()
            reply, cut_off = b"", False
            for ch in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([ch]))
                    data = s.recv(200)  # waits 0.25 s: the pace of the attack
                    reply += data
                    cut_off = cut_off or data == b""
                except socket.timeout:
                    pass
                except OSError:
                    cut_off = True
                if cut_off or reply or time.monotonic() - t0 > 5:
                    break
            assert reply.startswith(b"HTTP/1.1 408") or cut_off, reply
            assert time.monotonic() - t0 < 3
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:  # a body that stops coming
            s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                      b"content-length: 100\r\n\r\n{\"text\": ")
            t0 = time.monotonic()
            reply = s.recv(1000)
            assert reply.startswith(b"HTTP/1.1 408"), reply
            assert time.monotonic() - t0 < 3
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        srv.stop()
