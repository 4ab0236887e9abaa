from pathvlm.cli.common import add_model_arg


def add_parser(sub):
    p = sub.add_parser("search", help="search an index by text, or by an image for similar cases")
    p.add_argument("index", help="an index folder from `pathvlm index build`")
    p.add_argument("query", nargs="?", help="text query, e.g. 'tumour nest with mitoses'")
    p.add_argument("--image", help="an image: find the most similar gallery images instead")
    p.add_argument("-k", type=int, default=10, help="results to return (default 10)")
    add_model_arg(p, default=None, image_only_ok=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from pathvlm.cli.common import domain_note, print_json, warn
    from pathvlm.clip.factory import create_clip
    from pathvlm.domain import DomainCheck
    from pathvlm.embed import embed_images
    from pathvlm.encoders.factory import create_image_encoder
    from pathvlm.errors import PathVLMError
    from pathvlm.formatting import table
    from pathvlm.retrieval.index import GalleryIndex

    if bool(args.query) == bool(args.image):
        raise PathVLMError("give either a text query or --image (not both)")
    idx = GalleryIndex.load(args.index)
    source = args.model or idx.info["model"]["source"]
    if not source:
        raise PathVLMError("the index does not record its model source: pass --model")
    verdict = None
    if args.image:
        model, preprocess = create_image_encoder(source, device=args.device, text_tower=args.text_tower)
        idx.check_model(model)
        feats = embed_images(model, preprocess, [args.image], strict=True, num_workers=0, device=args.device)
        hits = idx.search_embedding(feats, k=args.k)  # the one embedding serves the search and the domain check
        verdict = DomainCheck.for_model(model, preprocess, source, warn=warn).check_features(feats)[0]
    else:  # an image-only model is refused here with a message saying what it can do instead
        model, preprocess, tokenizer = create_clip(source, device=args.device, text_tower=args.text_tower)
        hits = idx.search_text(args.query, model, tokenizer, k=args.k, device=args.device)
    for h in hits:
        h["file"] = str(idx.resolve(h))
    if args.json:
        print_json({"query": args.query, "image": args.image, "model": source, "hits": hits,
                    **({"domain": verdict} if verdict is not None else {})})
        return 0
    print(table([[h["rank"], f"{h['score']:.4f}", h["file"]] for h in hits], ["rank", "score", "path"]))
    domain_note(verdict)
    return 0
