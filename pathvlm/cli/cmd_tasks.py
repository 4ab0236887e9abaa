def add_parser(sub):
    p = sub.add_parser("tasks", help="list the shipped zero-shot prompt sets (for classify --task)")
    p.add_argument("name", nargs="?", help="show one task's classes, synonyms and templates")
    p.set_defaults(func=run)


def run(args):
    from pathvlm.zeroshot import list_prompt_sets, load_prompt_set

    if args.name:
        ps = load_prompt_set(args.name)
        print(f"{ps.name}: {ps.description}\nsource: {ps.source}\n")
        for cls, syns in ps.classes.items():
            print(f"  {cls}: {' | '.join(syns)}")
        print(f"\n{len(ps.templates)} templates, e.g. {ps.templates[1]!r}")
        return 0
    for name in list_prompt_sets():
        ps = load_prompt_set(name)
        print(f"  {name:<14} {len(ps.classes)} classes  {ps.description}")
    return 0
