"""``pathvlm chat IMAGE "question"``: ask the reasoner about one image; the answer streams to the terminal."""
from __future__ import annotations

import argparse


def add_parser(sub):
    p = sub.add_parser("chat", help="ask the PathVLM reasoner about an image (streamed answer), or write a report",
                       description="Answers one question about one image with the reasoner. Greedy by default; "
                                   "the reasoning (<think>) and the answer are printed as they are generated.")
    p.add_argument("image", help="an image file (PNG, JPEG, TIFF...)")
    p.add_argument("question", nargs="?", help="the question; omit with --report")
    p.add_argument("--model", default="pathvlm-nano",
                   help="a bundled reasoner (pathvlm-nano, pathvlm-nano-untrained), a save_pretrained folder, or an "
                        "original-format LLaVA folder (Quilt-LLaVA, LLaVA-Med, PathGen-LLaVA; converted once, cached)")
    p.add_argument("--system", default=None,
                   help="system prompt (default: the model's own, e.g. Patho-R1's <think>/<answer> prompt; '' for none)")
    p.add_argument("--vision-tower", default=None, metavar="DIR",
                   help="original LLaVA only: the CLIP folder its mm_vision_tower names, if not found by itself")
    p.add_argument("--template", default=None, choices=["vicuna_v1", "mistral_instruct"],
                   help="original LLaVA only: conversation template (default: vicuna_v1 for Llama, mistral_instruct "
                        "for Mistral checkpoints)")
    p.add_argument("--report", action="store_true", help="write a structured report (Specimen / Findings / Impression)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default: 256, or the model's cap if lower: a quarter of its context)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (reproducible)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling (temperature > 0)")
    p.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    p.add_argument("--json", action="store_true", help="print a JSON object (text, thinking, answer, token counts)")
    p.add_argument("--out", help="with --report: also write the markdown report to this file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 decodes faster on CPUs with bf16 support; answers can differ slightly")
    p.add_argument("--quantize", choices=["none", "int8", "q8_0"], default="none",
                   help="CPU: int8 (torch's int8 kernels) or q8_0 (the language model as GGUF Q8_0 in llama.cpp; needs "
                        "llama-cpp-python); speed and accuracy against fp32 in docs/benchmarks.md")
    p.add_argument("--ground-options", action=argparse.BooleanOptionalAction, default=True,
                   help="multiple-choice questions: the answer letter is the letter of the option the reasoning names "
                        "(default on; --no-ground-options shows the model's own letter; docs/models.md#option-grounding)")
    p.add_argument("--ground-verdicts", action=argparse.BooleanOptionalAction, default=True,
                   help="yes/no questions about a class: the answer agrees with the class the reasoning describes "
                        "(default on; --no-ground-verdicts shows the model's own verdict; "
                        "docs/models.md#verdict-grounding)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    from dataclasses import asdict
    from pathlib import Path

    from pathvlm.chat import ChatRequestError, load_reasoner
    from pathvlm.cli.common import domain_note, warn
    from pathvlm.domain import reasoner_check, with_note

    if not args.report and not (args.question or "").strip():
        raise ChatRequestError("give a question after the image, or --report for a structured report")
    reasoner = load_reasoner(args.model, device=args.device, precision=args.precision, vision_tower=args.vision_tower,
                             template=args.template, quantize=args.quantize)
    # the bundled reasoners see the image through pathclip-nano's tower: its domain description applies
    verdict = reasoner_check(args.model, device=args.device, warn=warn).check([args.image])[0]
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
               system=args.system, ground_options=args.ground_options, ground_verdicts=args.ground_verdicts)
    if args.report:
        rep = reasoner.report(args.image, max_new_tokens=args.max_new_tokens or 160, system=args.system)
        rep.text = with_note(rep.text, verdict)
        if args.out:
            Path(args.out).write_text(rep.text)
        if args.json:
            print(json.dumps({**asdict(rep), "domain": verdict}, indent=2))
        else:
            print(rep.text)
        return 0
    messages = [{"role": "user", "content": args.question}]
    if args.json or args.no_stream:
        res = reasoner.chat([args.image], messages, **gen)
        if args.json:
            print(json.dumps({**asdict(res), "domain": verdict}, indent=2))
        else:
            domain_note(verdict)
            print(res.text)
        return 0
    domain_note(verdict)
    for piece in reasoner.chat([args.image], messages, stream=True, **gen):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
