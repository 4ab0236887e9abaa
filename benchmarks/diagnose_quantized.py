"""Where ``--quantize int8`` moves the reasoner: which layers' quantisation error reaches the logits, and how
close the answers' decisive tokens were to begin with.

    python benchmarks/diagnose_quantized.py [--model pathvlm-nano] [--data runs/data/nano] [--split val] [--samples 24]

The fp32 model answers ``--samples`` closed questions greedily; every answer is then fed back (teacher forcing)
through copies of the model whose linear layers are *simulated* in int8 (fake quantisation in float32: weights
symmetric per output row, activations per token, asymmetric, as FBGEMM's dynamic kernel quantises one row).
For each variant it prints the mean KL divergence per answer token against fp32 and the share of answer tokens
whose greedy choice stays the same. The prompt rows keep float activations, as the real prefill does
(``pathvlm.vlm.quantize``). Variants: everything at 7-bit activations (what ``--quantize int8`` runs on any
CPU), weights only, activations only, one layer group at a time, 8-bit activations (CPUs with VNNI), and
SmoothQuant (activation outliers moved into the weights, calibrated on ``--calibration`` training questions).

It also finds the verdict of every yes/no answer ("These features are those of ..." against "... are not those
of ...") and prints the fp32 log-probability margin between the two continuations at that token, beside the
largest change any variant makes to the same margin: an answer flips where the change exceeds the margin.

Reads the val split by default, so it can be run while choosing a scheme without touching the test split that
``benchmarks/eval_quantized.py`` reports. About 5 minutes for 24 questions on one thread.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics

import torch


def fake_weight(w):
    """The float32 values ``--quantize int8``'s per-row weights stand for (``pathvlm.vlm.quantize.int8_weight``)."""
    from pathvlm.vlm.quantize import int8_weight

    q, scale = int8_weight(w)
    return q.float() * scale[:, None]


def fake_activations(x, bits: int):
    """Asymmetric per-row quantisation over [min(x, 0), max(x, 0)] with ``bits`` bits (FBGEMM dynamic)."""
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).clamp(min=1e-12)
    z = (-lo / s).round()
    return ((x / s + z).round().clamp(0, qmax) - z) * s


class Simulator:
    """Swaps the forward of chosen ``nn.Linear`` layers for a fake-quantised one; ``start`` is the first answer row."""

    def __init__(self, linears: dict):
        self.linears, self.start = linears, 0
        self.original = {n: m.forward for n, m in linears.items()}

    def set(self, names=(), weights=True, act_bits: int | None = 7, smooth: dict | None = None):
        import torch.nn.functional as F

        for n, m in self.linears.items():
            m.forward = self.original[n]
        for n in names:
            m = self.linears[n]
            sm = smooth.get(n) if smooth else None
            w = m.weight.detach() * (sm[None, :] if sm is not None else 1.0)
            w = fake_weight(w) if weights else w

            def forward(x, w=w, sm=sm, bias=m.bias):
                if sm is not None:
                    x = x / sm
                if act_bits:
                    st = self.start
                    x = torch.cat([x[..., :st, :], fake_activations(x[..., st:, :], act_bits)], dim=-2)
                return F.linear(x, w, bias)
            m.forward = forward



def verdict_position(tokenizer, ids: list[int], n_prompt: int):
    """The answer-token index of the verdict word after "These features are" (``those`` / ``not``), or None."""
    text, pos = "", None
    for i in range(n_prompt, len(ids)):
        text = tokenizer.decode(ids[n_prompt:i])
        if re.search(r"features are\s*$", text):
            pos = i
    return pos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathvlm-nano")
    ap.add_argument("--data", default="runs/data/nano")
    ap.add_argument("--split", default="val")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--calibration", type=int, default=8, help="training questions for SmoothQuant's maxima")
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import torch.nn.functional as F
    from torch import nn
    from tqdm import tqdm

    from pathvlm.chat import Reasoner
    from pathvlm.vlm.build import load_vlm
    from train.vlm.config import VLMTrainConfig
    from train.vlm.data import closed_questions

    torch.set_num_threads(args.threads)
    model, processor = load_vlm(args.model)
    model.eval()
    reasoner = Reasoner(model, processor, name=args.model)
    tok = processor.tokenizer
    cfg = VLMTrainConfig(data=args.data)
    rows = closed_questions(cfg, args.split, args.samples)
    answers = []
    with torch.inference_mode():
        for img, prompt in tqdm(list(zip(rows["image"], rows["prompt"])), desc="fp32 answers"):
            inputs, _ = reasoner._prepare([img], prompt)
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
            answers.append((inputs, out, inputs["input_ids"].shape[1]))

    linears = {n: m for n, m in model.model.language_model.named_modules() if isinstance(m, nn.Linear)}
    linears["lm_head"] = model.lm_head
    sim = Simulator(linears)
    those, not_ = tok(" those", add_special_tokens=False)["input_ids"][0], tok(" not", add_special_tokens=False)["input_ids"][0]
    verdicts = [verdict_position(tok, out[0].tolist(), n) for _, out, n in answers]

    def run():
        logps = []
        with torch.inference_mode():
            for inputs, out, n in answers:
                sim.start = n - 1
                logits = model(input_ids=out, pixel_values=inputs["pixel_values"],
                               attention_mask=torch.ones_like(out)).logits[0, n - 1:-1]
                logps.append(logits.float().log_softmax(-1))
        return logps

    reference = run()

    def margins(logps):
        return [None if v is None else (lp[v - answers[i][2], those] - lp[v - answers[i][2], not_]).item()
                for i, (lp, v) in enumerate(zip(logps, verdicts))]

    ref_margins = margins(reference)
    names = list(linears)
    group = lambda pat: [n for n in names if re.search(pat, n)]  # noqa: E731

    # SmoothQuant: per input channel s = max|x|^a / max|w|^(1-a), activation maxima from training questions
    maxima = {}
    hooks = []
    for n, m in linears.items():
        def hook(mod, a, n=n):
            v = a[0].detach().abs().reshape(-1, a[0].shape[-1]).amax(0)
            maxima[n] = v if n not in maxima else torch.maximum(maxima[n], v)
        hooks.append(m.register_forward_pre_hook(hook))
    calib = closed_questions(cfg, "train", args.calibration)
    with torch.inference_mode():
        for img, prompt in zip(calib["image"], calib["prompt"]):
            inputs, _ = reasoner._prepare([img], prompt)
            model.generate(**inputs, max_new_tokens=96, do_sample=False)
    for h in hooks:
        h.remove()
    smooth = {n: (maxima[n].clamp(min=1e-5) ** 0.5 / linears[n].weight.detach().abs().amax(0).clamp(min=1e-5) ** 0.5)
              .clamp(min=1e-5) for n in names}

    variants = [
        ("all layers, 7-bit activations (what --quantize int8 runs)", dict(names=names)),
        ("weights only (float activations)", dict(names=names, act_bits=None)),
        ("activations only, 7-bit (float weights)", dict(names=names, weights=False)),
        ("attention q/k/v only", dict(names=group("q_proj|k_proj|v_proj"))),
        ("attention o only", dict(names=group("o_proj"))),
        ("MLP gate/up only", dict(names=group("gate_proj|up_proj"))),
        ("MLP down only", dict(names=group("down_proj"))),
        ("LM head only", dict(names=["lm_head"])),
        ("all layers, 8-bit activations (VNNI CPUs)", dict(names=names, act_bits=8)),
        ("all layers, 7-bit, SmoothQuant a=0.5", dict(names=names, smooth=smooth)),
        ("all layers, 8-bit, SmoothQuant a=0.5", dict(names=names, act_bits=8, smooth=smooth)),
    ]
    n_tokens = sum(lp.shape[0] for lp in reference)
    out = {"model": args.model, "data": args.data, "split": args.split, "n": len(answers), "tokens": n_tokens,
           "variants": {}}
    print(f"\n{args.model}: {len(answers)} {args.split} questions, {n_tokens} answer tokens (teacher-forced fp32 answers)\n")
    print("| variant | KL per token (nats) | greedy token kept | verdict margin change, max |")
    print("|---|---|---|---|")
    for label, kw in tqdm(variants, desc="variants"):
        sim.set(**kw)
        logps = run()
        sim.set()
        kl = sum(F.kl_div(q, p, log_target=True, reduction="sum").item() for q, p in zip(logps, reference)) / n_tokens
        kept = sum((q.argmax(-1) == p.argmax(-1)).sum().item() for q, p in zip(logps, reference)) / n_tokens
        moved = [abs(a - b) for a, b in zip(margins(logps), ref_margins) if a is not None]
        out["variants"][label] = {"kl_per_token": kl, "greedy_kept": kept, "verdict_margin_change": moved}
        tqdm.write(f"| {label} | {kl:.4f} | {kept:.4f} | {max(moved, default=0):.2f} |")
    present = sorted(abs(m) for m in ref_margins if m is not None)
    out["verdict_margins"] = ref_margins
    if present:
        print(f"\nfp32 verdict margins |log p(those) - log p(not)| over {len(present)} answers: median "
              f"{statistics.median(present):.2f}, smallest {', '.join(f'{m:.2f}' for m in present[:5])}")
        int8 = out["variants"][variants[0][0]]["verdict_margin_change"]
        print(f"answers whose margin is smaller than the int8 change at that token: "
              f"{sum(abs(m) < d for m, d in zip([m for m in ref_margins if m is not None], int8))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
