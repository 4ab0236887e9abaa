"""One server for the web app and the HTTP API: FastAPI routes first, gradio mounted at ``/``.

``create_app(service)`` builds the ASGI app (tests use it with a real uvicorn in a thread);
``serve(config)`` loads the models and runs uvicorn. Files are served only from gradio's own upload
cache and the gallery folder (``allowed_paths``), and requests may name only uploaded files
(:mod:`serve.hardening`); ``--share`` needs auth and gradio's share server. uvicorn runs with a
request-header deadline and a connection cap (:mod:`serve.protocol`).
"""
from __future__ import annotations

import logging
import os
import threading
import time

from pathvlm.serving.config import ServeConfig
from pathvlm.serving.service import PathVLMService
from serve.protocol import uvicorn_config

log = logging.getLogger("pathvlm.serve")


def quiet_gradio() -> None:
    """No telemetry, no update checks: the server runs offline."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_RUN_HISTORY", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def gradio_auth(config: ServeConfig):
    """The web login: ``--auth`` user and password, or any user name with ``--token`` as password
    (compared in constant time; failed logins are throttled by the guard middleware)."""
    from pathvlm.serving.auth import password_ok

    if not config.auth_enabled:
        return None
    return lambda u, p: password_ok(u, p, config.auth, config.token)


def create_app(service: PathVLMService):
    quiet_gradio()
    from pathvlm.imports import require_package

    gr = require_package("gradio", extra="serve")
    from serve.api import create_api
    from serve.app import CSS, build_ui
    from serve.hardening import secure_blocks

    app = create_api(service)
    blocks = build_ui(service)
    # the gallery's images are the only files served besides gradio's own upload cache
    root = service.index.info.get("root") if service.index is not None else None
    allowed = [os.path.realpath(root)] if root else []
    auth = gradio_auth(service.config)
    app = gr.mount_gradio_app(
        app, blocks, path="/", auth=auth, auth_message="pathvlm: sign in" if auth else None, allowed_paths=allowed,
        max_file_size=service.limits.max_upload_bytes, show_error=True, footer_links=["api"], css=CSS,
        server_name=service.config.host, server_port=service.config.port, ssr_mode=False, mcp_server=False,
    )
    secure_blocks(blocks)  # the file checks of a launched app, and stricter ones (issue 14)
    return app


class ServerThread:
    """uvicorn in a background thread (tests, the load benchmark): ``with ServerThread(app, port): ...``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        service = getattr(getattr(app, "state", None), "service", None)
        if service is not None:  # a pathvlm app: the same uvicorn settings as `pathvlm serve`
            config = uvicorn_config(app, host, port, service.limits, log_level=log_level, graceful_s=2)
        else:
            config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(config: ServeConfig) -> int:
    """Load the models, then run the web app and API until interrupted."""
    import uvicorn

    quiet_gradio()
    service = PathVLMService.load(config)
    app = create_app(service)
    url = f"http://{config.host}:{config.port}"
    print(f"\npathvlm serve: web app {url}/  ·  API {url}/v1/  ·  schema {url}/docs  ·  health {url}/health")
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.auth_enabled:
        print(f"warning: listening on {config.host} without --auth or --token: anyone who can reach this port can use it")
    if config.auth_enabled:
        print("auth is on: the web app asks for a password; the API needs Authorization: Bearer <token> or basic auth")
    server = uvicorn.Server(uvicorn_config(app, config.host, config.port, config.limits))
    if config.share:
        threading.Thread(target=_share, args=(server, config), daemon=True).start()
    server.run()
    return 0


def _share(server, config: ServeConfig) -> None:
    """Open gradio's share tunnel once the server is up (needs internet and auth; refused otherwise)."""
    import secrets

    while not server.started:
        time.sleep(0.1)
    try:
        from gradio.networking import setup_tunnel

        address = setup_tunnel(config.host if config.host != "0.0.0.0" else "127.0.0.1", config.port,
                               secrets.token_urlsafe(32), None, None)
        print(f"public share link (auth required): {address}")
    except Exception as e:  # offline machines land here
        print(f"pathvlm serve: --share failed ({type(e).__name__}: {e}); the server stays local")


__all__ = ["create_app", "serve", "ServerThread"]
