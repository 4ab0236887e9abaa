from pathvlm.cli.common import add_model_arg


def add_parser(sub):
    p = sub.add_parser("demo", help="zero-shot + retrieval demo on the bundled gallery (builds it if needed)")
    add_model_arg(p)
    p.add_argument("--gallery", help="gallery folder (default: $PATHVLM_HOME/gallery)")
    p.add_argument("--index", help="index folder (default: $PATHVLM_HOME/index/<model fingerprint>)")
    p.set_defaults(func=run)


def run(args):
    from serve.demo import run_demo  # the app, imported only when asked for

    return run_demo(args.model, gallery=args.gallery, index=args.index, device=args.device)
