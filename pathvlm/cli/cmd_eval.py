def add_parser(sub):
    p = sub.add_parser("eval", help="run pinned evaluation tasks on a model; JSON results and a report",
                       description="Tasks are YAML files in evals/tasks/ (see --list). Results record the model "
                                   "fingerprint, data hash and seed; the same command gives the same numbers.")
    p.add_argument("--model", "-m", default="pathclip-nano", help="any create_clip source")
    p.add_argument("--tasks", help="comma-separated task names or YAML paths")
    p.add_argument("--out", default=None, help="output folder (default: runs/eval/<model>)")
    p.add_argument("--list", action="store_true", help="list the shipped tasks")
    p.set_defaults(func=run)


def run(args):
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
    out = args.out or f"runs/eval/{args.model.replace('/', '_').replace(':', '_')}"
    run_eval(args.model, names, out)
    print((__import__("pathlib").Path(out) / "report.md").read_text())
    print(f"wrote {out}/results.json and {out}/report.md")
    return 0
