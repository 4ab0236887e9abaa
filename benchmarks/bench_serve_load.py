"""Load test for `pathvlm serve`: many concurrent clients against one local server.

Starts `pathvlm serve` in a subprocess on a free port (or uses --url), then N clients each send a
few requests, a mix of POST /v1/classify, POST /v1/search (text and image) and short
POST /v1/chat/completions (streamed and not), all at once. A poller hits GET /health every 0.25 s
throughout. Prints p50/p99 latency per kind, errors, rejections (503 busy) and whether every
accepted request got a whole answer (classify: a probability per class summing to 1; search: k hits;
chat: a completion, or an SSE stream ending in a finish_reason chunk and [DONE]).

Usage:
  python benchmarks/bench_serve_load.py                      # bundled models, 50 clients x 2 requests
  python benchmarks/bench_serve_load.py --reasoner assembled --clients 50 --per-client 2 --chat-tokens 16
  python benchmarks/bench_serve_load.py --url http://127.0.0.1:7860 --token T
Exit status 1 if the server stopped answering /health, or an accepted request got a broken answer.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

LABELS = "tumour epithelium, stroma, lymphocytes, adipose tissue, normal mucosa"
QUERIES = ["nests of tumour cells with large pleomorphic nuclei", "dense collagenous stroma",
           "brown DAB immunohistochemical staining", "lymphocytic infiltrate"]
QUESTIONS = ["What tissue is shown?", "Is there evidence of malignancy?", "Describe the nuclei."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tile_payloads(n: int = 8) -> list[str]:
    from pathvlm.gallery import default_gallery_dir

    files = sorted(default_gallery_dir().glob("*.png"))[:n]
    if files:
        datas = [f.read_bytes() for f in files]
    else:  # no local gallery (remote --url): noise tiles still exercise the whole path
        rng = np.random.default_rng(0)
        datas = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(buf, format="PNG")
            datas.append(buf.getvalue())
    return ["data:image/png;base64," + base64.b64encode(d).decode() for d in datas]


def percentile(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


class Run:
    def __init__(self, url: str, headers: dict, images: list[str], chat: bool, chat_tokens: int, k: int):
        self.url, self.headers, self.images, self.chat, self.chat_tokens, self.k = url, headers, images, chat, chat_tokens, k
        self.results: list[dict] = []
        self.lock = threading.Lock()

    def kinds(self):
        kinds = ["classify", "search_text", "search_image"]
        if self.chat:
            kinds += ["chat_stream", "chat"]
        return kinds

    def one(self, client: httpx.Client, kind: str, i: int) -> dict:
        image = self.images[i % len(self.images)]
        t0 = time.perf_counter()
        whole, ttft = False, None
        if kind == "classify":
            r = client.post("/v1/classify", json={"image": image, "labels": LABELS})
            if r.status_code == 200:
                p = r.json()["probabilities"]
                whole = len(p) == 5 and abs(sum(p.values()) - 1) < 1e-3
        elif kind.startswith("search"):
            body = {"text": QUERIES[i % len(QUERIES)]} if kind == "search_text" else {"image": image}
            r = client.post("/v1/search", json={**body, "k": self.k})
            if r.status_code == 200:
                whole = len(r.json()["results"]) == self.k
        else:
            body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                              {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]}]}],
                    "max_tokens": self.chat_tokens, "stream": kind == "chat_stream"}
            if kind == "chat":
                r = client.post("/v1/chat/completions", json=body)
                if r.status_code == 200:
                    c = r.json()["choices"][0]
                    whole = c["finish_reason"] in ("stop", "length") and isinstance(c["message"]["content"], str)
            else:
                with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code == 200:
                        finished = done = broken = False
                        for line in r.iter_lines():
                            if not line.startswith("data: "):
                                continue
                            if line == "data: [DONE]":
                                done = True
                                break
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                broken = True
                                continue
                            if ttft is None and chunk["choices"][0]["delta"].get("content", chunk["choices"][0]["delta"].get("reasoning_content")):
                                ttft = time.perf_counter() - t0
                            finished = finished or chunk["choices"][0]["finish_reason"] is not None
                        whole = done and finished and not broken
                    else:
                        r.read()
        dt = time.perf_counter() - t0
        busy_msg = r.status_code == 503 and "busy" in r.text
        return {"kind": kind, "status": r.status_code, "latency": dt, "whole": whole, "ttft": ttft, "busy_msg": busy_msg}

    def client(self, cid: int, per_client: int, start: threading.Barrier):
        kinds = self.kinds()
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=600) as client:
            start.wait()
            for j in range(per_client):
                kind = kinds[(cid + j) % len(kinds)]
                try:
                    res = self.one(client, kind, cid * per_client + j)
                except httpx.HTTPError as e:
                    res = {"kind": kind, "status": f"{type(e).__name__}", "latency": float("nan"), "whole": False,
                           "ttft": None, "busy_msg": False}
                with self.lock:
                    self.results.append(res)


def poll_health(url: str, headers: dict, stop: threading.Event, out: list):
    with httpx.Client(base_url=url, headers=headers, timeout=5) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = c.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append((ok, time.perf_counter() - t0))
            stop.wait(0.25)


def assembled_reasoner(out: Path = Path("runs/serve-bench/pathvlm-assembled")) -> str:
    """pathclip-nano + SmolLM2-135M with an untrained projector: pathvlm-nano's size, before it is bundled."""
    if not (out / "config.json").exists():
        from pathvlm.vlm.build import build_from_sources

        print(f"assembling {out} (pathclip-nano + SmolLM2-135M-Instruct, untrained projector) ...")
        model, processor = build_from_sources("pathclip-nano", "default")
        model.save_pretrained(out)
        processor.save_pretrained(out)
    return str(out)


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if args.reasoner == "assembled":
        args.reasoner = assembled_reasoner()
    cmd = [sys.executable, "-m", "pathvlm", "serve", "--port", str(port), "--clip", args.clip]
    if args.reasoner:
        cmd += ["--reasoner", args.reasoner]
    if args.backend_url:
        cmd += ["--backend-url", args.backend_url]
    print("starting:", " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    lines = []
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited:\n" + "".join(lines))
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not start:\n" + "".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", help="an already running server (default: start one)")
    p.add_argument("--token", help="bearer token for a server started with --token")
    p.add_argument("--clip", default="pathclip-nano")
    p.add_argument("--reasoner", default=None,
                   help="passed to pathvlm serve (default: its default); 'assembled': pathclip-nano + SmolLM2-135M "
                        "with an untrained projector, the size of pathvlm-nano, built once under runs/serve-bench")
    p.add_argument("--backend-url", default=None)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends, one after another")
    p.add_argument("--chat-tokens", type=int, default=16, help="max_tokens of the chat requests")
    p.add_argument("-k", type=int, default=8)
    p.add_argument("--start-timeout", type=float, default=600)
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        health = httpx.get(url + "/health", headers=headers, timeout=10).json()
        chat = health.get("reasoner") is not None
        print(f"server {url}: clip {health['clip']}, reasoner {health['reasoner']}, gallery {health['gallery_items']} "
              f"tiles, queues {json.dumps({k: (v['concurrency'], v['max_waiting']) for k, v in health['queues'].items()})}"
              " (running, waiting)")
        if not chat:
            print("note: the server has no reasoner, so the mix has no chat requests")
        run = Run(url, headers, tile_payloads(), chat, args.chat_tokens, args.k)
        stop, polls = threading.Event(), []
        poller = threading.Thread(target=poll_health, args=(url, headers, stop, polls), daemon=True)
        poller.start()
        start = threading.Barrier(args.clients)
        threads = [threading.Thread(target=run.client, args=(i, args.per_client, start)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        time.sleep(0.5)
        stop.set()
        poller.join()
        final = httpx.get(url + "/health", headers=headers, timeout=10).json()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    res = run.results
    print(f"\n{len(res)} requests from {args.clients} concurrent clients in {wall:.1f} s")
    header = f"{'kind':<13}{'sent':>6}{'ok':>6}{'whole':>7}{'503':>6}{'errors':>8}{'p50 s':>9}{'p99 s':>9}{'ttft p50':>10}"
    print(header + "\n" + "-" * len(header))
    bad_answers = 0
    for kind in run.kinds() + ["all"]:
        rs = [r for r in res if kind == "all" or r["kind"] == kind]
        ok = [r for r in rs if r["status"] == 200]
        busy = [r for r in rs if r["status"] == 503]
        err = [r for r in rs if r["status"] not in (200, 503)]
        whole = [r for r in ok if r["whole"]]
        ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
        if kind == "all":
            bad_answers = len(ok) - len(whole)
        lat = [r["latency"] for r in ok]
        print(f"{kind:<13}{len(rs):>6}{len(ok):>6}{len(whole):>7}{len(busy):>6}{len(err):>8}"
              f"{percentile(lat, 50):>9.2f}{percentile(lat, 99):>9.2f}"
              f"{(percentile(ttft, 50) if ttft else float('nan')):>10.2f}")
    errs = sorted({str(r['status']) for r in res if r['status'] not in (200, 503)})
    if errs:
        print("error statuses:", ", ".join(errs))
    busy = [r for r in res if r["status"] == 503]
    if busy:
        print(f"rejections: {len(busy)} answered 503 with a 'busy' message: {sum(r['busy_msg'] for r in busy)}; "
              f"p50 time to the 503 {percentile([r['latency'] for r in busy], 50) * 1000:.0f} ms")
    up = [lat for ok, lat in polls if ok]
    print(f"/health: {len(polls)} polls, {len(polls) - len(up)} failed, p50 {percentile(up, 50) * 1000:.0f} ms, "
          f"max {max(up) * 1000 if up else float('nan'):.0f} ms")
    print("server counters:", json.dumps({k: {c: v[c] for c in ('admitted', 'rejected', 'completed', 'failed', 'timed_out')}
                                           for k, v in final["queues"].items()}))
    healthy = polls and len(up) == len(polls)
    print(f"server stayed up: {'yes' if healthy else 'NO'}; accepted requests with a whole answer: "
          f"{len([r for r in res if r['status'] == 200]) - bad_answers}/{len([r for r in res if r['status'] == 200])}")
    return 0 if healthy and bad_answers == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
