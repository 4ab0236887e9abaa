def add_parser(sub):
    p = sub.add_parser("data", help="build training sets from recipes; inspect them")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="run a recipe end to end and write datasets plus a data card")
    b.add_argument("recipe", help="a recipe YAML, e.g. data_recipes/nano.yaml")
    b.add_argument("--out", help="output folder (default: runs/data/<recipe name>)")
    b.add_argument("--set", action="append", default=[], metavar="VAR=VALUE",
                   help="a ${VAR} used in the recipe (e.g. --set SHARED=../shared/data)")
    b.add_argument("--limit", type=int, help="read at most N records per source (quick runs)")
    b.add_argument("--workers", type=int, default=1,
                   help="processes for decoding and hashing images, hashing captions and writing shards (-1: all "
                        "CPUs); the output is byte-identical for any number")
    b.add_argument("--engine", choices=["local", "datatrove", "ray"], default="local",
                   help="where the image stage runs: local processes (default), datatrove's executors or Ray Data "
                        "(local mode here; a cluster with their own settings; pip install 'pathvlm[engines]')")
    b.add_argument("--no-progress", action="store_true", help="no progress bars (logs, benchmarks)")
    b.set_defaults(func=run_build)
    s = dsub.add_parser("show", help="print (and plot) samples of a built dataset")
    s.add_argument("folder", help="a built recipe folder or one of its datasets (e.g. runs/data/nano/sft)")
    s.add_argument("--dataset", default=None, help="clip, align, sft or grpo (default: the first one found)")
    s.add_argument("--split", default="train")
    s.add_argument("-n", type=int, default=4, help="rows to show")
    s.add_argument("--plot", help="write a PNG grid of the images with their text")
    s.set_defaults(func=run_show)
    t = dsub.add_parser("sources", help="list the source adapters and their licences")
    t.set_defaults(func=run_sources)


def run_build(args):
    from pathlib import Path

    from pathvlm.data.build import build_recipe
    from pathvlm.data.config import load_recipe
    from pathvlm.errors import PathVLMError

    variables = {}
    for item in args.set:
        if "=" not in item:
            raise PathVLMError(f"--set needs VAR=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        variables[k] = v
    recipe = load_recipe(args.recipe, variables)
    if args.limit:
        for s in recipe.sources:
            s.limit = args.limit
    out = Path(args.out or f"runs/data/{recipe.name}")
    card = build_recipe(recipe, out, recipe_path=args.recipe, workers=args.workers, progress=not args.no_progress,
                        engine=args.engine)
    print((out / "data_card.md").read_text().split("## Example rows")[0])
    print(f"wrote {out} ({sum(sum(v.values()) for v in card['outputs'].values())} rows; data card {out / 'data_card.md'})")
    return 0


def run_show(args):
    from pathvlm.data.inspect import show

    return show(args.folder, args.dataset, args.split, args.n, args.plot)


def run_sources(args):
    from pathvlm.data.sources import list_adapters

    for name, info in sorted(list_adapters().items()):
        print(f"  {name:<18} {info.description}\n  {'':<18} licence: {info.licence}")
