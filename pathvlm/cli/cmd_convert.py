"""``pathvlm convert llava SRC OUT``: an original-format LLaVA checkpoint as a transformers folder."""
from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a checkpoint to a permanent transformers folder (original LLaVA)",
                       description="Checkpoints in a project's own training layout, written once as a standard "
                                   "transformers folder that pathvlm (--model OUT) and transformers load directly.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    llava = kinds.add_parser(
        "llava", help="original-format LLaVA (Quilt-LLaVA v1.5, LLaVA-Med v1.5 Mistral, PathGen-LLaVA, LLaVA v1.5)",
        description="Writes OUT as a transformers LlavaForConditionalGeneration folder: language model and projector "
                    "from SRC's shards, the vision tower from the CLIP folder SRC's mm_vision_tower names (or "
                    "--vision-tower), a tokenizer with an <image> token, LLaVA's conversation template and pad-to-square "
                    "preprocessing. pathvlm tokenises around <image> exactly as LLaVA does (pathvlm_llava.json).")
    llava.add_argument("src", help="the original checkpoint folder (config.json with model_type llava / llava_llama / "
                                   "llava_mistral and mm_* keys)")
    llava.add_argument("out", help="folder to write: new, empty, or an earlier conversion (replaced); anything else is refused")
    llava.add_argument("--vision-tower", metavar="DIR", default=None,
                       help="the CLIP folder (e.g. a copy of openai/clip-vit-large-patch14-336); default: "
                            "mm_vision_tower as a path, inside SRC, or in the offline Hugging Face cache")
    llava.add_argument("--template", choices=["vicuna_v1", "mistral_instruct"], default=None,
                       help="conversation template (default: vicuna_v1 for Llama, mistral_instruct for Mistral)")
    llava.add_argument("--dtype", choices=["keep", "float16", "bfloat16", "float32"], default="keep",
                       help="weights' dtype in OUT (default: as stored in SRC and the CLIP folder)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from pathvlm.vlm.llava_original import convert

    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    out = convert(args.src, args.out, vision_tower=args.vision_tower, template=args.template, dtype=dtype)
    print(f"wrote {out} (transformers LlavaForConditionalGeneration); chat with: pathvlm chat IMAGE \"question\" "
          f"--model {out}")
    return 0
