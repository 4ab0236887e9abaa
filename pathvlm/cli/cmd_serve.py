"""``pathvlm serve``: the web app (chat, classify, retrieval, report) and the HTTP API on one server."""


def add_parser(sub):
    p = sub.add_parser(
        "serve", help="web chat, zero-shot classification, retrieval and reports, plus an OpenAI-compatible HTTP API",
        description="Runs the web app at http://HOST:PORT/ and the API at /v1/ (schema at /docs). Bundled models by "
                    "default, offline. Flags override the --config YAML file.",
    )
    p.add_argument("--config", help="serve YAML file (fields: host, port, clip, reasoner, gallery, limits: {...})")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 for the lab network)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--clip", default=None, help="PathCLIP source for classification and search (default pathclip-nano)")
    p.add_argument("--reasoner", default=None,
                   help="reasoner: pathvlm-nano (default), a saved model folder, or 'none' (chat and reports off)")
    p.add_argument("--quantize", default=None, choices=["none", "int8", "q8_0"],
                   help="the local reasoner's language model on CPU: int8 (torch's int8 kernels) or q8_0 (GGUF Q8_0 "
                        "decoded by llama.cpp; needs llama-cpp-python); speed and accuracy in docs/benchmarks.md")
    p.add_argument("--backend-url", default=None,
                   help="send generation to an external OpenAI-compatible server (vLLM, TGI) at this URL")
    p.add_argument("--backend-model", default=None, help="model name to ask the backend for")
    p.add_argument("--gallery", default=None,
                   help="folder of tiles for search and similar cases (default: the demo gallery; 'none' for no gallery)")
    p.add_argument("--index", default=None, help="index folder (default: cached under $PATHVLM_HOME/index)")
    p.add_argument("--device", default=None, help="torch device (cpu, cuda, mps)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--auth", default=None, help="USER:PASSWORD for the web app (and HTTP basic auth on the API)")
    g.add_argument("--token", default=None, help="API bearer token (also the web app's password, any user name)")
    p.add_argument("--share", action="store_true", default=None,
                   help="public gradio share link; refused unless --auth or --token is set")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest upload in MB (default 10)")
    p.set_defaults(func=run)


def run(args):
    import os

    from pathvlm.serving.config import load_serve_config

    limits = {}
    if args.max_upload_mb is not None:
        limits["max_upload_bytes"] = int(args.max_upload_mb * 1_000_000)
    token = args.token or os.environ.get("PATHVLM_SERVE_TOKEN")
    config = load_serve_config(
        args.config, host=args.host, port=args.port, clip=args.clip, reasoner=args.reasoner, quantize=args.quantize,
        backend_url=args.backend_url, backend_model=args.backend_model, gallery=args.gallery, index=args.index,
        device=args.device, auth=args.auth, token=token, share=args.share, limits=limits,
    )
    from serve.server import serve  # the app, imported only when asked for

    return serve(config)
