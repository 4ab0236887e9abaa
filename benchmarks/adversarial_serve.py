"""Replay issue 14's probes against `pathvlm serve` on this machine and print PASS/FAIL per probe.

    python benchmarks/adversarial_serve.py                    # start `pathvlm serve` (bundled models) from this
                                                              # checkout: once open, once with --token
    python benchmarks/adversarial_serve.py --repo /tmp/main   # the same with another checkout's code (e.g. main)
    python benchmarks/adversarial_serve.py --url http://127.0.0.1:7860 [--token T]   # a server already running

Loopback only: a --url that is not 127.0.0.1 / localhost / ::1 is refused. Bounded: every probe has a
deadline, the run stops at --budget-s, the largest payload is about 2 MB, the "many images" probe sends
--many-images lying JPEGs (each decodes to 72 MB on a server that decodes before counting; the issue's
100 grew the server to 9.5 GB, the default 8 stays near 1 GB), and the files planted under the temp
dir are removed at the end. With a started server the probes that measure memory read its peak RSS
(VmHWM, reset through /proc/PID/clear_refs); against --url they are skipped.

Probes, by the issue's points: 1 file reads through gradio file objects (every named endpoint taking
a file, image or chat history; /gradio_api/call and the queue join route; with and without auth);
2 memory (many images in one request, large images queued); 3 classify work (99 synonyms per label,
a 504 that must free its slot); 4 presets that are paths; 5 clients that disconnect while queued or
running; 6 inputs that gave 500s, the error envelope, 413, 405; 7 damaged JPEGs, EXIF orientation,
EPS, failed-login throttling, slow headers, slow bodies, and the index build's corrupt build.json
and --part-size (command line); 8 the routes added since (/v1/report's inputs and token, the domain
field on every image answer).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
from PIL import Image

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HERE = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- the server under test
class StartedServer:
    """`python -m pathvlm serve` from ``repo`` in a subprocess, on a free loopback port."""

    def __init__(self, repo: Path, token: str | None, config: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "pathvlm", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--config", str(config)] + (["--token", token] if token else [])
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the server did not answer /health within {timeout_s:.0f} s; see {self.log.name}")

    def _status(self, key: str) -> int | None:
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else None

    def rss(self) -> int | None:
        return self._status("VmRSS")

    def peak(self) -> int | None:
        return self._status("VmHWM")

    def reset_peak(self) -> bool:
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


@dataclass
class Context:
    url: str
    token: str | None
    server: StartedServer | None
    repo: Path
    many_images: int
    workdir: Path
    planted: dict = field(default_factory=dict)
    cookies: httpx.Cookies | None = None
    request_timeout_s: float = 15.0

    def client(self, timeout: float = 60.0, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and auth else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers, cookies=self.cookies)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()


# ---------------------------------------------------------------------- payloads
def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", **kw)
    return buf.getvalue()


def tile(seed: int = 0, size: int = 224) -> Image.Image:
    """An H&E-coloured tile with structure (pink stroma, purple nuclei), deterministic."""
    import random

    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (232, 182, 208))
    px = im.load()
    for _ in range(size * size // 40):
        x, y, r = rng.randrange(size), rng.randrange(size), rng.randrange(2, 5)
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                if 0 <= x + dx < size and 0 <= y + dy < size and dx * dx + dy * dy <= r * r:
                    px[x + dx, y + dy] = (110, 60, 150)
    return im


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def lying_jpeg(claimed=(6000, 4000)) -> bytes:
    """A 224x224 JPEG whose frame header claims ``claimed`` (width, height): ~16-30 kB on the wire."""
    data = bytearray(jpeg_bytes(tile(1), quality=85))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", claimed[1], claimed[0])
    return bytes(data)


def png_with_chunk(kind: bytes) -> bytes:
    png = png_bytes(tile(2, 64))
    payload = (b"Comment\x00\x00" if kind == b"zTXt" else b"icc\x00\x00") + zlib.compress(b"A" * 20_000_000)
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]


def chat(text="What tissue is this?", image: str | None = None, **extra) -> dict:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return {"messages": [{"role": "user", "content": content}], **extra}


def file_data(path) -> dict:
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def error_message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return json.dumps(body)[:200]


def envelope_ok(r: httpx.Response) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


# ---------------------------------------------------------------------- gradio helpers
def gradio_call(c: httpx.Client, name: str, data: list, timeout: float = 60) -> str:
    r = c.post(f"/gradio_api/call/{name}", json={"data": data})
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text[:300]}"
    return c.get(f"/gradio_api/call/{name}/{r.json()['event_id']}", timeout=timeout).text


def gradio_run(c: httpx.Client, name: str, data: list, timeout: float = 60) -> str:
    """gradio's direct route (no queue): the answer comes back in the POST's response."""
    r = c.post(f"/gradio_api/run/{name}", json={"data": data}, timeout=timeout)
    return f"HTTP {r.status_code} {r.text}"


def gradio_queue(c: httpx.Client, fn_index: int, data: list, timeout: float = 60) -> str:
    session = uuid.uuid4().hex
    r = c.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                               "event_data": None, "trigger_id": None})
    if r.status_code != 200:
        return f"HTTP {r.status_code} {r.text[:300]}"
    lines = []
    deadline = time.monotonic() + timeout
    with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=timeout) as s:
        for line in s.iter_lines():
            lines.append(line)
            if "process_completed" in line or time.monotonic() > deadline:
                break
    return "\n".join(lines)


def leaks(c: httpx.Client, text: str, planted: dict) -> list[str]:
    found = []
    if planted["marker"] in text:
        found.append("secret text in the response")
    if "root:x:0:0" in text:
        found.append("/etc/passwd in the response")
    for url in sorted(set(re.findall(r"/gradio_api/file=[^\"\s\\]+", text)))[:20]:
        try:
            body = c.get(url).content
        except httpx.HTTPError:
            continue
        if planted["marker"].encode() in body:
            found.append(f"secret served at {url}")
        elif b"root:x:0:0" in body:
            found.append(f"/etc/passwd served at {url}")
        elif body == planted["image_bytes"]:
            found.append(f"server image served at {url}")
    return found


def completed(text: str) -> bool:
    return "event: complete" in text or '"success":true' in text.replace(" ", "")


def gradio_errors(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        try:
            value = json.loads(line[5:])
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("msg") == "process_completed":
            value = (value.get("output") or {}).get("error")
        elif isinstance(value, dict):
            value = value.get("error")
        if isinstance(value, str):
            out.append(value)
    return out


def file_endpoints(c: httpx.Client) -> dict[str, list]:
    info = c.get("/gradio_api/info").json()["named_endpoints"]
    kinds = {"Image", "File", "Chatbot", "Gallery", "Video", "Audio", "Model3D", "ImageEditor", "MultimodalTextbox"}
    return {n.lstrip("/"): ep["parameters"] for n, ep in info.items() if any(p["component"] in kinds for p in ep["parameters"])}


def default_args(params, **by_component) -> list:
    """Arguments from an endpoint's parameter list (``Image=...`` fills image inputs): the probes follow the
    app when it gains an input."""
    values = {"Slider": 3, "Number": 3, "Dropdown": "(type class names)", "Chatbot": [], "Textbox": "a, b",
              **by_component}
    return [values.get(p["component"]) for p in params]


def classify_args(c: httpx.Client, image) -> list:
    return default_args(file_endpoints(c)["classify"], Image=image, Textbox="tumour, stroma")


def hostile(planted: dict) -> dict[str, dict]:
    tmp = Path(tempfile.gettempdir())
    cache = Path(os.environ.get("GRADIO_TEMP_DIR") or tmp / "gradio")
    out = {f"FileData {k}": file_data(p) for k, p in {
        "planted secret": planted["text"], "planted image": planted["image"], "/etc/passwd": "/etc/passwd",
        "missing file": tmp / "pathvlm-no-such-file.png", "traversal": cache / ".." / planted["text"].name}.items()}
    out["FileData without meta"] = {"path": str(planted["image"])}
    out["component message"] = {"type": "component", "component": "file", "value": {"path": str(planted["text"])},
                                 "constructor_args": {}, "props": {}}
    return out


def as_history(value: dict) -> list:
    content = [value] if value.get("type") == "component" else [{"type": "file", "file": value, "alt_text": None}]
    return [{"role": "user", "metadata": None, "options": None, "content": content},
            {"role": "user", "metadata": None, "options": None, "content": [{"type": "text", "text": "and this?"}]}]


# ---------------------------------------------------------------------- probes
PROBES: list[tuple[str, str, str, object]] = []  # (id, issue point, description, function)


def probe(pid: str, point: str, description: str):
    def register(fn):
        PROBES.append((pid, point, description, fn))
        return fn

    return register


@probe("1.1", "1", "the issue's curl: /etc/passwd in a chat history via /gradio_api/call/drop_last_answer")
def p_passwd(ctx: Context):
    with ctx.client() as c:
        data = [[{"role": "user", "metadata": None, "options": None,
                  "content": [{"type": "file", "file": file_data("/etc/passwd"), "alt_text": None}]}]]
        text = gradio_call(c, "drop_last_answer", data)
        found = leaks(c, text, ctx.planted)
    return not found, "; ".join(found) or "refused: " + (gradio_errors(text) or [text[:120]])[0][:120]


@probe("1.2", "1", "every gradio endpoint taking a file/image/chat history, 7 hostile file references, /call, queue join, /run")
def p_every_endpoint(ctx: Context):
    with ctx.client() as c:
        endpoints = file_endpoints(c)
        fn_index = {d.get("api_name"): d["id"] for d in c.get("/config").json()["dependencies"]}
        found, tried = [], 0
        for name, params in endpoints.items():
            for label, value in hostile(ctx.planted).items():
                for i, p in enumerate(params):
                    if p["component"] not in ("Image", "File", "Chatbot"):
                        continue
                    data = default_args(params)
                    data[i] = as_history(value) if p["component"] == "Chatbot" else value
                    for route in ("call", "queue", "run"):
                        text = (gradio_call(c, name, data) if route == "call" else
                                gradio_queue(c, fn_index[name], data) if route == "queue" else gradio_run(c, name, data))
                        tried += 1
                        found += [f"{route} /{name} <- {label}: {x}" for x in leaks(c, text, ctx.planted)]
    return not found, (f"{len(found)} of {tried} calls leaked, e.g. {found[0]}" if found else
                       f"{tried} calls over {len(endpoints)} endpoints ({', '.join(sorted(endpoints))}): no leak")


@probe("1.3", "1", "gradio classify on an image elsewhere on the server (FileData, and FileData without meta)")
def p_classify_server_image(ctx: Context):
    with ctx.client() as c:
        ran = []
        for label, value in (("FileData", file_data(ctx.planted["image"])), ("no meta", {"path": str(ctx.planted["image"])})):
            text = gradio_call(c, "classify", classify_args(c, value))
            if completed(text) and "Prediction" in text:
                ran.append(label)
    return not ran, f"classified a server file via {', '.join(ran)}" if ran else "refused"


@probe("1.4", "1", "no path-existence oracle: the same error for an existing and a missing path")
def p_oracle(ctx: Context):
    with ctx.client() as c:
        texts = {}
        for label, path in (("existing", ctx.planted["image"]), ("missing", Path(tempfile.gettempdir()) / "no-such-14.png")):
            texts[label] = gradio_call(c, "classify", classify_args(c, file_data(path)))
    errs = {k: (gradio_errors(v) or ["<completed>" if completed(v) else v[:100]])[0] for k, v in texts.items()}
    same = errs["existing"] == errs["missing"]
    return same, "identical errors" if same else f"existing: {errs['existing'][:90]!r} / missing: {errs['missing'][:90]!r}"


@probe("2.1", "2", "one chat request with many images whose JPEG header claims 4000x6000 (16-30 kB each)")
def p_many_images(ctx: Context):
    img = data_url(lying_jpeg((4000, 6000)), "image/jpeg")
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": img}}] * ctx.many_images
                          + [{"type": "text", "text": "what is it?"}]}], "max_tokens": 1}
    before = _mem_start(ctx)
    with ctx.client(timeout=120) as c:
        r = c.post("/v1/chat/completions", json=body)
    growth, detail = _mem_end(ctx, before)
    ok = 400 <= r.status_code < 500 and (growth is None or growth < 200e6)
    return ok, f"{len(json.dumps(body)) / 1e6:.2f} MB request, {ctx.many_images} images -> {r.status_code} " \
               f"{error_message(r)[:80]!r}; {detail}"


@probe("2.2", "2", "9 chat requests at once, each with a real 4000x6000 JPEG (the queue's pixels)")
def p_queued_pixels(ctx: Context):
    big = data_url(jpeg_bytes(Image.new("RGB", (4000, 6000), (228, 190, 214)), quality=60), "image/jpeg")

    def one(codes):
        try:
            with ctx.client(timeout=180) as c:
                codes.append(c.post("/v1/chat/completions", json=chat("one word?", big, max_tokens=1)).status_code)
        except httpx.HTTPError as e:
            codes.append(type(e).__name__)

    single = []
    before = _mem_start(ctx)
    one(single)  # one such request alone: what a single 24-Mpixel image costs this server
    g1, d1 = _mem_end(ctx, before)
    codes = []
    before = _mem_start(ctx)
    threads = [threading.Thread(target=one, args=(codes,)) for _ in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    g9, d9 = _mem_end(ctx, before)
    summary = ", ".join(f"{codes.count(k)}x{k}" for k in sorted(set(codes), key=str))
    decoded = 4000 * 6000 * 3
    # the queue may add less than 4 decoded images' worth to what one request costs (nine would add eight)
    ok = single == [200] and all(k in (200, 503) for k in codes) and (g1 is None or g9 - g1 < 4 * decoded)
    extra = f"; the queue added {(g9 - g1) / 1e6:.0f} MB over one request (a decoded image is {decoded / 1e6:.0f} MB)" \
        if g1 is not None else ""
    return ok, f"one request alone: {d1}. Nine at once: answers {summary}; {d9}{extra}"


def _mem_start(ctx: Context):
    if ctx.server is None:
        return None
    ctx.server.reset_peak()
    return ctx.server.rss()


def _mem_end(ctx: Context, before):
    if ctx.server is None or before is None:
        return None, "memory not measured (server not started here)"
    time.sleep(1.0)
    peak, after = ctx.server.peak(), ctx.server.rss()
    growth = peak - before
    return growth, (f"server RSS {before / 1e9:.2f} GB before, peak {peak / 1e9:.2f} GB (+{growth / 1e6:.0f} MB), "
                    f"{after / 1e9:.2f} GB after")


@probe("4.1", "4", "preset as an absolute path, a ../ path, a list JSON and a directory")
def p_preset_paths(ctx: Context):
    rel = "../" * 12 + str(ctx.planted["preset"]).lstrip("/")
    bad = []
    with ctx.client() as c:
        for label, preset in (("absolute", str(ctx.planted["preset"])), ("relative", rel),
                              ("list JSON", str(ctx.planted["list_json"])), ("directory", tempfile.gettempdir())):
            r = c.post("/v1/classify", json={"image": data_url(png_bytes(tile(3, 64))), "preset": preset})
            if r.status_code != 400 or ctx.planted["marker"] in r.text:
                bad.append(f"{label}: {r.status_code}{' (planted file read)' if ctx.planted['marker'] in r.text else ''}")
    return not bad, "; ".join(bad) or "all 400, nothing read"


@probe("6.1", "6", "PNG with an oversized zTXt chunk -> 400")
def p_ztxt(ctx: Context):
    return _status_probe(ctx, "/v1/classify", {"image": data_url(png_with_chunk(b"zTXt")), "labels": "a,b"}, 400)


@probe("6.2", "6", "PNG with an oversized iCCP chunk -> 400")
def p_iccp(ctx: Context):
    return _status_probe(ctx, "/v1/classify", {"image": data_url(png_with_chunk(b"iCCP")), "labels": "a,b"}, 400)


@probe("6.3", "6", "seed 2**70 -> 400")
def p_seed(ctx: Context):
    return _status_probe(ctx, "/v1/chat/completions", chat("hi", data_url(png_bytes(tile(4, 64))), seed=2**70,
                                                            max_tokens=2, temperature=0.7), 400)


@probe("6.4", "6", "temperature 1e-39 -> answered (greedy), not 500")
def p_temperature(ctx: Context):
    return _status_probe(ctx, "/v1/chat/completions", chat("hi", data_url(png_bytes(tile(4, 64))), temperature=1e-39,
                                                            max_tokens=2, seed=1), 200)


@probe("6.5", "6", "a lone surrogate in chat text -> 400")
def p_surrogate(ctx: Context):
    raw = json.dumps(chat("X", data_url(png_bytes(tile(4, 64))), max_tokens=2)).replace('"X"', '"bad \\ud800 text"')
    return _status_probe(ctx, "/v1/chat/completions", raw.encode(), 400)


@probe("6.6", "6", "chunked body over the cap -> 413")
def p_chunked(ctx: Context):
    def chunks():
        for _ in range(160):  # 16 MB, over the default 13.6 MB body cap
            yield b"A" * 100_000

    with ctx.client(timeout=120) as c:
        try:
            r = c.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__} (connection dropped without an answer)"
    return r.status_code == 413 and envelope_ok(r), f"{r.status_code} {error_message(r)[:90]!r}"


@probe("6.7", "6", "invalid UTF-8 body -> 400 in the {\"error\": ...} envelope")
def p_utf8(ctx: Context):
    with ctx.client() as c:
        r = c.post("/v1/classify", content=b'{"image": "\xff\xfe", "labels": "a,b"}',
                   headers={"content-type": "application/json"})
    return r.status_code == 400 and envelope_ok(r), f"{r.status_code} {r.text[:100]!r}"


@probe("6.8", "6", "deeply nested JSON -> 400 in the envelope")
def p_deep(ctx: Context):
    with ctx.client() as c:
        r = c.post("/v1/classify", content=b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                   headers={"content-type": "application/json"})
    return r.status_code == 400 and envelope_ok(r), f"{r.status_code} {r.text[:100]!r}"


@probe("6.9", "6", "wrong methods -> 405 with Allow")
def p_methods(ctx: Context):
    bad = []
    with ctx.client() as c:
        for method, path in (("GET", "/v1/classify"), ("DELETE", "/v1/chat/completions"), ("POST", "/v1/models")):
            r = c.request(method, path)
            if r.status_code != 405 or "allow" not in r.headers or not envelope_ok(r):
                bad.append(f"{method} {path}: {r.status_code}")
    return not bad, "; ".join(bad) or "405 with Allow, in the envelope"


@probe("7.1", "7", "JPEG whose header claims 6000x4000 but holds 224x224 of data -> refused as damaged")
def p_lying_jpeg(ctx: Context):
    return _status_probe(ctx, "/v1/classify", {"image": data_url(lying_jpeg(), "image/jpeg"), "labels": "a,b"}, 400)


@probe("7.2", "7", "EXIF orientation applied (search scores of a tile stored rotated with its EXIF tag)")
def p_exif(ctx: Context):
    with ctx.client() as c:
        hits = c.post("/v1/search", json={"text": "tissue", "k": 1}).json().get("results") or []
        if not hits:
            return None, "no gallery on this server"
        im = Image.open(io.BytesIO(c.get(hits[0]["url"]).content)).convert("RGB")
        im = im.crop((0, 0, im.width // 16 * 16, im.height * 2 // 3 // 16 * 16))  # not square; whole JPEG blocks
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
        rotated = im.transpose(Image.Transpose.ROTATE_90)  # stored 90 degrees counter-clockwise
        variants = {"plain": jpeg_bytes(im, quality=100), "exif": jpeg_bytes(rotated, quality=100, exif=exif.tobytes()),
                    "rotated": jpeg_bytes(rotated, quality=100)}
        scores = {}
        for k, data in variants.items():
            res = c.post("/v1/search", json={"image": data_url(data, "image/jpeg"), "k": 50}).json()["results"]
            scores[k] = {h["path"]: h["score"] for h in res}
    common = set(scores["plain"]) & set(scores["exif"]) & set(scores["rotated"])
    if len(common) < 3:
        return None, "inconclusive (too few common hits)"
    d_exif = max(abs(scores["exif"][p] - scores["plain"][p]) for p in common)
    d_rot = max(abs(scores["rotated"][p] - scores["plain"][p]) for p in common)
    if d_rot < 0.01:
        return None, f"inconclusive: rotation barely changes this tile's scores ({d_rot:.4f})"
    return d_exif < d_rot / 3, f"max score change with the EXIF tag {d_exif:.4f} vs rotated pixels {d_rot:.4f}"


@probe("7.3", "7", "EPS upload refused by name, Ghostscript never mentioned")
def p_eps(ctx: Context):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke showpage\n"
    with ctx.client() as c:
        r = c.post("/v1/classify", json={"image": base64.b64encode(eps).decode(), "labels": "a,b"})
    msg = error_message(r)
    return r.status_code == 400 and "EPS" in msg and "ghostscript" not in msg.lower(), f"{r.status_code} {msg[:100]!r}"


@probe("7.5", "7", "slow headers (a byte a second): cut off")
def p_slow_headers(ctx: Context):
    u = urlparse(ctx.url)
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.settimeout(1.0)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for i in range(30):
            try:
                s.sendall(b"X")
                data = s.recv(100)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    return True, f"cut off after {time.monotonic() - t0:.0f} s ({data[:30]!r})"
            except socket.timeout:
                continue
            except OSError as e:
                return True, f"cut off after {time.monotonic() - t0:.0f} s ({type(e).__name__})"
    return False, f"still connected after {time.monotonic() - t0:.0f} s of a header byte a second"


@probe("7.6", "7", "slow body (stops sending after 10 bytes): 408")
def p_slow_body(ctx: Context):
    u = urlparse(ctx.url)
    auth = f"Authorization: Bearer {ctx.token}\r\n".encode() if ctx.token else b""
    t0 = time.monotonic()
    with socket.create_connection((u.hostname, u.port), timeout=50) as s:
        s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n" + auth +
                  b"content-length: 1000\r\n\r\n{\"text\": ")
        try:
            data = s.recv(200)
        except socket.timeout:
            return False, f"no answer after {time.monotonic() - t0:.0f} s"
    ok = data.startswith(b"HTTP/1.1 408")
    return ok, f"{data[:40]!r} after {time.monotonic() - t0:.0f} s"


@probe("3.1", "3", "classify with 64 labels x 99 synonyms: answered or refused fast, slots free after")
def p_synonyms(ctx: Context):
    labels = [f"c{i}" + "|a" * 98 for i in range(64)]
    body = {"image": data_url(png_bytes(tile(5, 64))), "labels": labels}
    t0 = time.monotonic()
    with ctx.client(timeout=15) as c:
        try:
            r = c.post("/v1/classify", json=body)
            answer = f"{r.status_code} {error_message(r)[:80]!r}"
        except httpx.ReadTimeout:
            answer = "no answer within 15 s"
    took = time.monotonic() - t0
    deadline = time.monotonic() + 10
    while ctx.health()["queues"]["embed"]["running"] and time.monotonic() < deadline:
        time.sleep(0.5)
    held = ctx.health()["queues"]["embed"]["running"]
    return took < 15 and not held, f"{len(json.dumps(body)) / 1e3:.0f} kB request -> {answer} in {took:.1f} s; " \
                                   f"embed slots busy 10 s later: {held}"


@probe("3.2", "3", "a 504 frees its slot (chat of 512 tokens past request_timeout_s)")
def p_timeout_slot(ctx: Context):
    limit = ctx.request_timeout_s
    with ctx.client(timeout=limit + 60) as c:
        t0 = time.monotonic()
        r = c.post("/v1/chat/completions", json=chat("Describe everything in detail.", data_url(png_bytes(tile(6))),
                                                     max_tokens=512))
        took = time.monotonic() - t0
    if r.status_code != 504:
        return None, f"{r.status_code} in {took:.0f} s: generation finished before the {limit:.0f} s timeout"
    t1 = time.monotonic()
    while ctx.health()["queues"]["generate"]["running"] and time.monotonic() - t1 < 60:
        time.sleep(0.25)
    freed = time.monotonic() - t1
    return freed < 5, f"504 after {took:.0f} s; the slot was free {freed:.1f} s later"


@probe("5.1", "5", "clients that disconnect while queued or running: the queue empties at once")
def p_disconnect(ctx: Context):
    img = data_url(png_bytes(tile(7)))

    def go(timeout, stream=False):
        try:
            with ctx.client(timeout=timeout) as c:
                c.post("/v1/chat/completions", json=chat("Describe everything in detail.", img, max_tokens=512, stream=stream))
        except httpx.HTTPError:
            pass

    before = ctx.health()["queues"]["generate"]
    holder = threading.Thread(target=go, args=(3.0,))  # runs, then its client goes at 3 s
    holder.start()
    time.sleep(1.0)
    queued = [threading.Thread(target=go, args=(1.5, k == 2)) for k in range(3)]  # wait, then go
    for t in queued:
        t.start()
    for t in queued + [holder]:
        t.join(30)
    t_gone = time.monotonic()
    while time.monotonic() - t_gone < 90:
        q = ctx.health()["queues"]["generate"]
        if q["running"] == 0 and q["waiting"] == 0:
            break
        time.sleep(0.25)
    idle = time.monotonic() - t_gone
    after = ctx.health()["queues"]["generate"]
    admitted = after["admitted"] - before["admitted"]  # a client that left before its request was read is not
    counted = after.get("cancelled", 0) - before.get("cancelled", 0) if "cancelled" in after else None
    detail = f"queue idle {idle:.1f} s after the last client left; {admitted} of 4 requests admitted; " + (
        f"/health cancelled +{counted}" if counted is not None else "/health has no cancelled count")
    return idle < 5 and admitted >= 1 and counted == admitted, detail


def _status_probe(ctx: Context, path: str, body, want: int):
    with ctx.client(timeout=120) as c:
        try:
            if isinstance(body, bytes):
                r = c.post(path, content=body, headers={"content-type": "application/json"})
            else:
                r = c.post(path, json=body)
        except httpx.HTTPError as e:
            return False, f"{type(e).__name__}: the connection closed without an answer"
    return r.status_code == want and (want == 200 or envelope_ok(r)), f"{r.status_code} {error_message(r)[:100]!r}"


# ---------------------------------------------------------------------- routes added after the issue
@probe("8.1", "8", "/v1/report: a lying JPEG header, an oversized PNG chunk, bare text and max_tokens 0 -> 400")
def p_report_bad_inputs(ctx: Context):
    bodies = {"lying JPEG": {"image": data_url(lying_jpeg((4000, 6000)), "image/jpeg")},
              "zTXt chunk": {"image": data_url(png_with_chunk(b"zTXt"))},
              "not an image": {"image": base64.b64encode(b"hello, not an image").decode()},
              "max_tokens 0": {"image": data_url(png_bytes(tile(8, 64))), "max_tokens": 0}}
    bad = []
    before = _mem_start(ctx)
    with ctx.client(timeout=120) as c:
        for label, body in bodies.items():
            r = c.post("/v1/report", json=body)
            if r.status_code != 400 or not envelope_ok(r):
                bad.append(f"{label}: {r.status_code} {r.text[:80]!r}")
        r = c.get("/v1/report")
        if r.status_code != 405:
            bad.append(f"GET /v1/report: {r.status_code}")
    growth, detail = _mem_end(ctx, before)
    ok = not bad and (growth is None or growth < 200e6)
    return ok, ("; ".join(bad) or "all 400 in the envelope, GET 405") + f"; {detail}"


@probe("8.2", "8", "/v1/report and the CLIP routes refuse requests without the token")
def p_report_needs_token(ctx: Context):
    if not ctx.token:
        return None, "needs a server with --token"
    body = {"image": data_url(png_bytes(tile(9, 64)))}
    with ctx.client(auth=False) as c:
        codes = {path: c.post(path, json=b).status_code for path, b in
                 (("/v1/report", body), ("/v1/classify", {**body, "labels": "a,b"}), ("/v1/search", {"text": "x"}))}
    return all(v == 401 for v in codes.values()), str(codes)


@probe("8.3", "8", "every image answer carries the domain check (classify, search --image, report, chat)")
def p_domain_field(ctx: Context):
    img = data_url(png_bytes(tile(10)))
    missing = []
    with ctx.client(timeout=300) as c:
        answers = {"classify": c.post("/v1/classify", json={"image": img, "labels": "a,b"}),
                   "search": c.post("/v1/search", json={"image": img, "k": 1}),
                   "report": c.post("/v1/report", json={"image": img, "max_tokens": 4}),
                   "chat": c.post("/v1/chat/completions", json=chat("one word?", img, max_tokens=2))}
    for name, r in answers.items():
        if r.status_code == 404 and name == "search":
            continue  # no gallery index on this server
        if r.status_code != 200 or "domain" not in r.json():
            missing.append(f"{name}: {r.status_code} {sorted(r.json())[:6] if r.status_code == 200 else r.text[:60]!r}")
    return not missing, "; ".join(missing) or "domain in " + ", ".join(answers)


# ---------------------------------------------------------------------- with auth only
@probe("7.4", "7", "failed logins throttled (API bearer token and web /login)")
def p_logins(ctx: Context):
    if not ctx.token:
        return None, "needs a server with --token"
    api = [httpx.get(ctx.url + "/v1/models", headers={"Authorization": "Bearer wrong-guess"}, timeout=10).status_code
           for _ in range(12)]
    web_ip = {"X-Forwarded-For": "203.0.113.77"}
    web = [httpx.post(ctx.url + "/login", data={"username": "u", "password": f"guess{i}"}, headers=web_ip,
                      timeout=10).status_code for i in range(12)]
    ok = 429 in api[:8] and 429 in web[:8]
    return ok, f"API: {api}; web /login: {web}"


# ---------------------------------------------------------------------- command line (the same checkout)
def cli(ctx: Context, *args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ctx.repo), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pathvlm", *args], cwd=ctx.repo, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiles_folder(ctx: Context) -> Path:
    folder = ctx.workdir / "tiles"
    if not folder.exists():
        folder.mkdir(parents=True)
        for i in range(5):
            tile(10 + i, 96).save(folder / f"t{i}.png")
    return folder


@probe("6.10", "6", "`pathvlm classify` on a PNG with an oversized zTXt chunk: an error, no traceback")
def p_cli_ztxt(ctx: Context):
    bad = ctx.workdir / "ztxt.png"
    bad.write_bytes(png_with_chunk(b"zTXt"))
    r = cli(ctx, "classify", str(bad), "--classes", "a,b")
    return r.returncode == 2 and "Traceback" not in r.stderr, f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1][:120]!r}"


@probe("7.7", "7", "`pathvlm index build` with a corrupt parts/build.json: a clear error, parts kept")
def p_cli_build_json(ctx: Context):
    out = ctx.workdir / "idx-corrupt"
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "parts" / "build.json").write_text("{not json")
    r = cli(ctx, "index", "build", str(tiles_folder(ctx)), "--out", str(out), "--workers", "0")
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return r.returncode == 2 and "Traceback" not in r.stderr, f"exit {r.returncode}: {last[:140]!r}"


@probe("7.8", "7", "`pathvlm index build --part-size 2` saves parts to resume from")
def p_cli_part_size(ctx: Context):
    r = cli(ctx, "index", "build", str(tiles_folder(ctx)), "--out", str(ctx.workdir / "idx-parts"), "--workers", "0",
            "--part-size", "2")
    last = ((r.stdout + r.stderr).strip().splitlines() or [""])[-1]
    return r.returncode == 0, f"exit {r.returncode}: {last[:120]!r}"


SESSIONS = {  # probe ids per server: the open one, the one with --token (gradio with a web login), the command line
    "open": ["1.1", "1.2", "1.3", "1.4", "4.1", "6.1", "6.2", "6.3", "6.4", "6.5", "6.6", "6.7", "6.8", "6.9", "7.1",
             "7.2", "7.3", "7.5", "7.6", "8.1", "8.3", "2.1", "2.2", "3.1", "3.2", "5.1"],
    "auth": ["1.1", "1.2", "1.3", "1.4", "7.4", "8.2"],
    "cli": ["6.10", "7.7", "7.8"],
}


# ---------------------------------------------------------------------- running
def plant(workdir: Path) -> dict:
    tmp = Path(tempfile.gettempdir())
    marker = f"PATHVLM-ADVERSARIAL-SECRET-{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    files = {"text": tmp / f"pathvlm-adv-secret-{tag}.txt", "image": tmp / f"pathvlm-adv-secret-{tag}.png",
             "preset": tmp / f"pathvlm-adv-preset-{tag}.json", "list_json": tmp / f"pathvlm-adv-list-{tag}.json"}
    files["text"].write_text(marker)
    files["image"].write_bytes(png_bytes(tile(9, 96)))
    files["preset"].write_text(json.dumps({"name": marker, "classes": {marker: [marker], "b": ["b"]}, "templates": ["{}"]}))
    files["list_json"].write_text("[1, 2, 3]")
    return {**files, "marker": marker, "image_bytes": files["image"].read_bytes()}


def login(ctx: Context) -> None:
    r = httpx.post(ctx.url + "/login", data={"username": "adversary", "password": ctx.token}, timeout=20)
    if r.status_code != 200:
        raise RuntimeError(f"web login failed: {r.status_code} {r.text[:100]}")
    ctx.cookies = r.cookies


def run_session(name: str, ctx: Context, deadline: float, results: list, only: set | None = None) -> None:
    by_id = {p[0]: p for p in PROBES}
    for pid in SESSIONS[name]:
        if only and pid not in only:
            continue
        _, point, description, fn = by_id[pid]
        if time.monotonic() > deadline:
            results.append((name, pid, point, description, None, "not run: --budget-s reached", 0.0))
            continue
        t0 = time.monotonic()
        try:
            ok, detail = fn(ctx)
        except Exception as e:  # a probe that crashes the connection, or the server, is a failure
            ok, detail = False, f"{type(e).__name__}: {str(e)[:150]}"
        took = time.monotonic() - t0
        results.append((name, pid, point, description, ok, detail, took))
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        print(f"[{name:4}] {pid:5} {mark}  {description}\n              {detail}  ({took:.1f} s)", flush=True)


def write_config(path: Path, request_timeout_s: float) -> Path:
    path.write_text(f"limits:\n  request_timeout_s: {request_timeout_s}\n")  # keys every version of serve knows
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server (loopback only); default: start one from --repo")
    ap.add_argument("--token", help="the running server's --token (with --url); probes then log in first")
    ap.add_argument("--repo", default=str(HERE), help="checkout whose `pathvlm serve` to start (default: this one)")
    ap.add_argument("--sessions", default="open,auth,cli", help="which of open, auth, cli to run (started servers)")
    ap.add_argument("--request-timeout-s", type=float, default=15.0,
                    help="request_timeout_s of a started server (the 504 probe waits for it)")
    ap.add_argument("--many-images", type=int, default=8, help="images in the many-images probe (the issue: ~100)")
    ap.add_argument("--only", help="comma-separated probe ids to run (default: all)")
    ap.add_argument("--budget-s", type=float, default=1800.0, help="stop starting probes after this many seconds")
    ap.add_argument("--start-timeout-s", type=float, default=900.0)
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    repo = Path(args.repo).resolve()
    only = {p.strip() for p in args.only.split(",")} if args.only else None
    workdir = Path(tempfile.mkdtemp(prefix="pathvlm-adversarial-"))
    planted = plant(workdir)
    results: list = []
    try:
        if args.url:
            host = urlparse(args.url).hostname
            if host not in LOOPBACK:
                ap.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), not {host}")
            ctx = Context(args.url.rstrip("/"), args.token, None, repo, args.many_images, workdir, planted,
                          request_timeout_s=args.request_timeout_s)
            if args.token:
                login(ctx)
            run_session("auth" if args.token else "open", ctx, deadline, results, only)
            if not args.token:
                print("(the auth probes need --token and a server started with it; skipped)")
        else:
            for name in [s.strip() for s in args.sessions.split(",") if s.strip()]:
                if only and not set(SESSIONS[name]) & only:
                    continue
                if name == "cli":
                    ctx = Context("", None, None, repo, args.many_images, workdir, planted)
                    run_session("cli", ctx, deadline, results, only)
                    continue
                token = f"adv-{uuid.uuid4().hex[:16]}" if name == "auth" else None
                print(f"starting pathvlm serve from {repo} ({name}) ...", flush=True)
                server = StartedServer(repo, token, write_config(workdir / "serve.yaml", args.request_timeout_s),
                                       workdir / f"server-{name}.log")
                try:
                    server.wait_ready(args.start_timeout_s)
                    ctx = Context(server.url, token, server, repo, args.many_images, workdir, planted,
                                  request_timeout_s=args.request_timeout_s)
                    if token:
                        login(ctx)
                    run_session(name, ctx, deadline, results, only)
                    alive = server.proc.poll() is None
                    print(f"[{name}] server still running after the probes: {alive}; log: {server.log.name}")
                finally:
                    server.stop()
    finally:
        for key in ("text", "image", "preset", "list_json"):
            planted[key].unlink(missing_ok=True)
    counts = {k: sum(1 for r in results if r[4] is v) for k, v in (("PASS", True), ("FAIL", False), ("SKIP", None))}
    print(f"\nsummary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"({time.monotonic() - t_start:.0f} s; code: {repo})")
    for session, pid, point, description, ok, detail, took in results:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        print(f"  {mark}  [{session}] {pid:5} (issue point {point}) {description}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
