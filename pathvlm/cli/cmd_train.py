def add_parser(sub):
    p = sub.add_parser("train", help="train models: clip (PathCLIP continued pretraining)")
    tsub = p.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    c = tsub.add_parser("clip", help="contrastive continued pretraining from any source create_clip loads",
                        description="Runs on one CPU or, under `accelerate launch`, many GPUs. Resumes from the "
                                    "last complete checkpoint in OUTPUT_DIR/checkpoints.")
    c.add_argument("--config", required=True, help="a YAML recipe, e.g. train/recipes/clip/pathclip_nano.yaml")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (YAML value syntax), e.g. --set epochs=1")
    c.set_defaults(func=run_clip)


def parse_overrides(items):
    import yaml

    from pathvlm.errors import PathVLMError

    out = {}
    for item in items:
        if "=" not in item:
            raise PathVLMError(f"--set needs FIELD=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def run_clip(args):
    from train.clip.config import load_config  # the app, imported only when asked for
    from train.clip.trainer import train_clip

    result = train_clip(load_config(args.config, parse_overrides(args.set)))
    print(f"final model: {result['final']} ({result['seconds']:.0f} s); load it with --model {result['final']}")
    return 0
