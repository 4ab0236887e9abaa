from pathvlm.cli.common import add_model_arg


def add_parser(sub):
    p = sub.add_parser(
        "classify", help="zero-shot classify images against typed class names or a preset task",
        description="Zero-shot classification with prompt ensembles. Example: "
                    "pathvlm classify tile.png --classes 'adenocarcinoma|tumor, benign colonic mucosa'",
    )
    p.add_argument("images", nargs="+", help="image files or folders (PNG, JPEG, TIFF)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help="comma-separated class names; 'name|synonym|synonym' adds synonyms")
    g.add_argument("--task", help="a shipped prompt set (see `pathvlm tasks`) or a prompt-set JSON file")
    add_model_arg(p)
    p.add_argument("--top-k", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--single-prompt", action="store_true", help="no ensembling: one synonym, one template per class")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 8 on CPU, 128 on GPU)")
    p.add_argument("--json", action="store_true", help="print JSON (per-image probabilities for every class)")
    p.set_defaults(func=run)


def run(args):
    from pathvlm.cli.common import domain_note, print_json, warn
    from pathvlm.clip.factory import create_clip
    from pathvlm.domain import DomainCheck
    from pathvlm.embed import embed_images
    from pathvlm.images import expand_image_args
    from pathvlm.zeroshot import ZeroShotClassifier, load_prompt_set, prompt_set_from_names

    paths = expand_image_args(args.images)
    prompt_set = load_prompt_set(args.task) if args.task else prompt_set_from_names(args.classes)
    model, preprocess, tokenizer = create_clip(args.model, device=args.device, text_tower=args.text_tower)
    clf = ZeroShotClassifier(model, tokenizer, prompt_set, ensemble=not args.single_prompt, device=args.device)
    feats = embed_images(model, preprocess, paths, strict=True, device=args.device, batch_size=args.batch_size,
                         num_workers=0 if len(paths) < 64 else None)
    results = [clf.describe(str(p), row, args.top_k) for p, row in zip(paths, clf.probabilities(feats))]
    check = DomainCheck.for_model(model, preprocess, args.model, warn=warn)
    for r, verdict in zip(results, check.check_features(feats)):
        r["domain"] = verdict
    if args.json:
        print_json({"model": args.model, "task": prompt_set.name, "classes": clf.class_names, "results": results})
        return 0
    for r in results:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"])
        print(f"{r['image']}: {best}")
        domain_note(r["domain"])
    return 0
