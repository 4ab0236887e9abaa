def add_parser(sub):
    p = sub.add_parser("eval", help="run pinned evaluation tasks on a model; JSON results and a report",
                       description="Tasks are YAML files in evals/tasks/ (see --list). Embedding tasks (zeroshot, "
                                   "linear_probe, few_shot, retrieval, stain_robustness) run a PathCLIP given by --model; "
                                   "generative tasks (vqa_closed, vqa_open, vqa, mcq, closed_qa, caption, report) run "
                                   "the reasoner given by --reasoner, or by --model when every task asked for is "
                                   "generative. Results record the model fingerprints, data hash, seed and decoding "
                                   "settings; the same command gives the same numbers.")
    p.add_argument("--model", "-m", default=None,
                   help="PathCLIP source (any create_clip source; default pathclip-nano), or an image-only encoder "
                        "(UNI, Virchow2, ...: linear_probe, few_shot, retrieval and stain_robustness tasks); the "
                        "reasoner when every task is generative")
    p.add_argument("--reasoner", default=None, help="reasoner source for generative tasks (default: --model if every "
                                                    "task is generative, else pathvlm-nano)")
    p.add_argument("--tasks", help="comma-separated task names or YAML paths")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/<model>)")
    p.add_argument("--device", default="cpu", help="device for the reasoner (cpu, cuda)")
    p.add_argument("--skip-missing", action="store_true",
                   help="record tasks whose data is not on this machine as skipped instead of stopping")
    p.add_argument("--max-samples", type=int, default=None, metavar="N",
                   help="keep each task's first N samples (by id for built question sets): bounds a slow "
                        "generative run on the CPU; recorded in the results")
    p.add_argument("--ground-options", action="store_true",
                   help="generative tasks: multiple-choice letters follow the option the reasoning names, as chat and "
                        "serve decode (docs/models.md#option-grounding; recorded in the task's decoding settings)")
    p.add_argument("--ground-verdicts", action="store_true",
                   help="generative tasks: yes/no verdicts follow the class the reasoning describes, as chat and serve "
                        "decode (docs/models.md#verdict-grounding; recorded in the task's decoding settings)")
    p.add_argument("--list", action="store_true", help="list the shipped tasks")
    p.set_defaults(func=run)


def resolve_models(model: str | None, reasoner: str | None, tasks) -> tuple[str | None, str | None]:
    """(PathCLIP source, reasoner source) for a set of tasks: --model names the reasoner only when
    every task is generative and --reasoner is not given."""
    generative = [t.generative for t in tasks]
    if generative and all(generative):
        return None, reasoner or model or "pathvlm-nano"
    return model or "pathclip-nano", (reasoner or "pathvlm-nano") if any(generative) else None


def run(args):
    from pathlib import Path

    from evals.tasks import list_tasks, load_task  # the harness app, imported only when asked for
    from pathvlm.errors import PathVLMError

    if args.list or not args.tasks:
        for name in list_tasks():
            t = load_task(name)
            print(f"  {name:<34} {t.kind:<16} {t.description[:90]}")
        if not args.tasks:
            return 0
    from evals.runner import run_eval

    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not names:
        raise PathVLMError("no tasks given")
    clip_source, reasoner = resolve_models(args.model, args.reasoner, [load_task(n) for n in names])
    label = clip_source or reasoner
    out = args.out or f"runs/eval/{label.replace('/', '_').replace(':', '_')}"
    run_eval(clip_source, names, out, reasoner=reasoner, skip_missing=args.skip_missing, device=args.device,
             max_samples=args.max_samples,
             grounding={"ground_options": args.ground_options, "ground_verdicts": args.ground_verdicts})
    print((Path(out) / "report.md").read_text())
    print(f"wrote {out}/results.json, {out}/report.md and {out}/report.html")
    return 0
