def add_parser(sub):
    p = sub.add_parser("train", help="train models: clip (PathCLIP), align / sft / grpo (the PathVLM reasoner)")
    tsub = p.add_subparsers(dest="train_command", metavar="STAGE", required=True)
    c = tsub.add_parser("clip", help="contrastive continued pretraining from any source create_clip loads",
                        description="Runs on one CPU or, under `accelerate launch`, many GPUs. Resumes from the "
                                    "last complete checkpoint in OUTPUT_DIR/checkpoints.")
    c.add_argument("--config", required=True, help="a YAML recipe, e.g. train/recipes/clip/pathclip_nano.yaml")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (YAML value syntax), e.g. --set epochs=1")
    c.set_defaults(func=run_clip)
    helps = {"align": "PathVLM alignment: the projector (optionally LoRA) on image-caption pairs, plus optional "
                      "text-only continued pretraining",
             "sft": "PathVLM supervised fine-tuning with chain of thought (TRL SFTTrainer, assistant-only loss, LoRA or full)",
             "grpo": "PathVLM reinforcement learning with verifiable rewards (TRL GRPOTrainer)"}
    for stage, text in helps.items():
        s = tsub.add_parser(stage, help=text, description=text + ". Runs on one CPU or, under `accelerate launch`, "
                            "many GPUs (DDP, FSDP, DeepSpeed ZeRO-2/3 configs in train/recipes/accelerate_configs). "
                            "Resumes from the last complete checkpoint in OUTPUT_DIR.")
        s.add_argument("--config", required=True, help=f"a YAML recipe, e.g. train/recipes/vlm/nano_{stage}.yaml")
        s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field (YAML value syntax), e.g. --set max_steps=2")
        s.set_defaults(func=run_vlm_stage, stage=stage)


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


def run_vlm_stage(args):
    from train.vlm.config import load_config
    from train.vlm.trainer import run_stage

    result = run_stage(load_config(args.config, parse_overrides(args.set), stage=args.stage))
    if result:
        acc = result.get("eval", {}).get("accuracy")
        print(f"{args.stage}: {result['steps']} steps in {result['train_seconds']:.0f} s"
              + (f"; held-out closed-question accuracy {acc:.3f}" if acc is not None else ""))
        print(f"merged model: {result['final']}  (chat with: pathvlm chat --model {result['final']} IMAGE \"question\")")
        print(f"adapter: {result['adapter']}  (next stage: init_adapter: {result['adapter']})")
    return 0
