"""Helpers for the serve tests: a gallery of tiles, a service on tiny models, a fake OpenAI-compatible server."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from conftest import he_like_tile


MAX_UPLOAD = 200_000


def load_service(clip_dir, gallery, tmp_path_factory, limits: dict, **overrides):
    """A :class:`PathVLMService` on tiny models, its index in a fresh temp folder (``overrides``: ServeConfig fields)."""
    from pathvlm.serving.config import ServeConfig, limits_from_dict
    from pathvlm.serving.service import PathVLMService

    cfg = ServeConfig(clip=str(clip_dir), gallery=str(gallery), index=str(tmp_path_factory.mktemp("index") / "idx"),
                      limits=limits_from_dict(limits), **overrides)
    return PathVLMService.load(cfg, say=lambda *_: None)


def start_server(tiny_clip_dir, gallery, tmp_path_factory, **overrides):
    """``pathvlm serve``'s app on tiny models in a uvicorn thread: ``(ServerThread, service)``."""
    from serve.server import ServerThread, create_app

    limits = {"max_upload_bytes": MAX_UPLOAD, "max_image_pixels": 1_000_000, **overrides.pop("limits", {})}
    service = load_service(tiny_clip_dir, gallery, tmp_path_factory, limits, **{"reasoner": "none", **overrides})
    return ServerThread(create_app(service)).start(), service


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def make_gallery(folder: Path, n: int = 8) -> Path:
    """Tiles with provenance metadata in the demo gallery's layout (he_like_tile: pipeline tests only)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        hue = ("pink", "purple")[i % 2]
        name = f"tile{i}.png"
        he_like_tile(i, size=64, hue=hue).save(folder / name)
        rows.append({"file_name": name, "source_package": "fixture", "source_file": f"slide{i % 3}.svs", "licence": "CC0-1.0",
                     "stain": "H&E", "organ": "colon", "x": 64 * i, "y": 0, "hue": hue})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def real_he_tile(tmp: Path) -> Path:
    """A real H&E tile from a pip-shipped image (the demo gallery's source), or None if the wheel is absent."""
    from pathvlm.gallery import SOURCES, build_gallery

    try:
        folder = build_gallery(tmp / "real_gallery", tile_size=128, sources=[s for s in SOURCES if s.key == "tia_target"])
    except Exception:
        return None
    return sorted(folder.glob("*.png"))[0]


class FakeOpenAI:
    """A tiny OpenAI-compatible chat server (vLLM stand-in). Replies describe what it received.

    Questions containing "slow" wait until ``release`` is set, to hold a slot while a test fills the queue.
    Every request (including any GET, which a URL fetch would be) is recorded in ``requests``.
    """

    def __init__(self):
        self.requests: list[tuple[str, str, dict | None]] = []
        self.release = threading.Event()
        app = FastAPI()

        def reply_for(body) -> tuple[str, str]:
            msgs = body["messages"]
            n_images = sum(1 for m in msgs if isinstance(m["content"], list)
                           for p in m["content"] if p.get("type") == "image_url")
            valid = all(p["image_url"]["url"].startswith("data:image/png;base64,") for m in msgs
                        if isinstance(m["content"], list) for p in m["content"] if p.get("type") == "image_url")
            question = msgs[-1]["content"]
            question = question if isinstance(question, str) else " ".join(p.get("text", "") for p in question if p.get("type") == "text")
            return (f"I see {n_images} image(s), data URLs {'valid' if valid else 'INVALID'}.",
                    f"Eosinophilic stroma with scattered nuclei. You asked: {question.strip()} (turns: {len(msgs)})")

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append(("POST", request.url.path, body))
            reasoning, answer = reply_for(body)
            if "slow" in json.dumps(body["messages"][-1]):
                await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
            if not body.get("stream"):
                return {"id": "x", "object": "chat.completion", "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": f"<think>{reasoning}</think><answer>{answer}</answer>"}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}
            text = f"<think>{reasoning}</think><answer>{answer}</answer>"

            async def events():
                for i in range(0, len(text), 5):  # pieces cut across tags on purpose
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text[i:i + 5]}}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    await asyncio.sleep(0.02)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.api_route("/{path:path}", methods=["GET", "HEAD"])
        async def anything(path: str, request: Request):
            self.requests.append((request.method, "/" + path, None))
            return JSONResponse({"error": "nothing here"}, status_code=404)

        self.app = app
