from pathvlm.cli.common import add_model_arg


def add_parser(sub):
    p = sub.add_parser("index", help="build or inspect a retrieval index over a folder of images")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="embed every image under FOLDER into an index (resumable)")
    b.add_argument("folder", help="folder of images; metadata.jsonl/metadata.csv with file_name is attached")
    b.add_argument("--out", required=True, help="index folder to write")
    add_model_arg(b, image_only_ok=True)
    b.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: 8 on CPU, 128 on GPU)")
    b.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 1 on 2 cores)")
    b.add_argument("--encode-in-workers", action="store_true",
                   help="CPU: each worker decodes and runs the image tower on one thread (use --workers = cores); "
                        "faster than one multi-threaded tower beside decoding on small CPUs (docs/benchmarks.md)")
    b.add_argument("--part-size", type=_positive_int, default=2048,
                   help="images per saved part: an interrupted build resumes from the last finished part "
                        "(default 2048; a smaller value saves progress more often, at a small cost)")
    b.add_argument("--ann-threshold", type=int, default=None,
                   help="use an approximate (IVF) index from this many images on (default 50000)")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="image-tower compute precision: bf16 is faster on AVX512-BF16/AMX CPUs and GPUs, "
                        "fp32 matches the model exactly (default)")
    b.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: run the image tower in ONNX Runtime (CPU, fp32; pip install 'pathvlm[onnx]'); checked "
                        "at cosine >= 0.9999 to torch's embeddings, faster on the CPUs measured (docs/benchmarks.md)")
    b.set_defaults(func=run_build)
    i = isub.add_parser("info", help="print an index's model, size and settings")
    i.add_argument("index")
    i.set_defaults(func=run_info)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run_build(args):
    from pathvlm.encoders.factory import create_image_encoder
    from pathvlm.retrieval.ann import DEFAULT_ANN_THRESHOLD
    from pathvlm.retrieval.index import GalleryIndex

    model, preprocess = create_image_encoder(args.model, device=args.device, text_tower=args.text_tower)
    idx = GalleryIndex.build(
        args.folder, args.out, model, preprocess, source=args.model, batch_size=args.batch_size, part_size=args.part_size,
        num_workers=args.workers, ann_threshold=args.ann_threshold or DEFAULT_ANN_THRESHOLD, device=args.device,
        precision=args.precision, backend=args.backend, encode_in_workers=args.encode_in_workers,
    )
    info = idx.info
    print(f"indexed {info['count']} images into {args.out} ({info['ann']['kind']}, dim {info['dim']}, "
          f"model {args.model} {info['model']['fingerprint']})")
    for s in info["skipped"]:
        print(f"skipped {s['path']}: {s['error']}")
    return 0


def run_info(args):
    import json

    from pathvlm.retrieval.index import GalleryIndex

    info = dict(GalleryIndex.load(args.index).info)
    info["skipped"] = len(info["skipped"])
    print(json.dumps(info, indent=2))
    return 0
