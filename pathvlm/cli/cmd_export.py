from pathvlm.cli.common import add_model_arg


def add_parser(sub):
    p = sub.add_parser("export", help="save any model source as a self-contained pathvlm folder (offline copy)")
    add_model_arg(p)
    p.add_argument("out", help="folder to write (open_clip local-dir layout + tokenizer + pathvlm.json; CLIPModel, "
                               "CONCH and KEEP models keep their own layout)")
    p.set_defaults(func=run)


def run(args):
    from pathvlm.clip.factory import create_clip
    from pathvlm.clip.folder import read_meta, save_clip

    model, _, tokenizer = create_clip(args.model, device="cpu", text_tower=args.text_tower)
    out = save_clip(model, tokenizer, args.out)
    print(f"saved {args.model} to {out} (fingerprint {read_meta(out)['fingerprint']}); load it with --model {out}")
    return 0
