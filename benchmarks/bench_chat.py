"""`pathvlm chat` latency: time to first token and tokens/s of the reasoner's streamed chat against a plain
``model.generate`` on the same model, image and prompt, measured side by side in one run.
Targets for pathvlm-nano on 2 CPU cores: first token within 1 s, at least 20 tokens/s, ratio >= 1.0.

    python benchmarks/bench_chat.py [--model pathvlm-nano] [--precision fp32 bf16] [--threads 1 2] [--runs 5] [--tokens 64]

Both sides run the same model at the same precision (fp32, and bf16 weights as the fast option) and produce exactly ``--tokens`` new tokens (end-of-turn ignored) from the same processed input.
plain generate: first token = ``generate(max_new_tokens=1)`` (prefill + one step); tokens/s = N / time of
``generate(max_new_tokens=N, min_new_tokens=N)``. pathvlm chat: first token = the first streamed text piece
of ``Reasoner.chat(stream=True)`` (request validation, chat template and image preprocessing included);
tokens/s = N / time to the last piece. Medians over ``--runs`` runs after one warm-up.

The ceiling column is the physical limit for any decoder of this model at this precision on this machine:
tokens/s if a decode step were nothing but its matrix-vector products (every linear weight of the language
model and the LM head applied to one token's activations, each weight read once from memory).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def tile():
    """A real H&E tile: the centre 224 px of tiatoolbox's target image (pip-shipped, read without importing it)."""
    from pathvlm.images import load_image
    from pathvlm.paths import package_file

    path = package_file("tiatoolbox", "data/target_image.png", "tiatoolbox")
    img = load_image(path)
    w, h = img.size
    return img.crop((w // 2 - 112, h // 2 - 112, w // 2 + 112, h // 2 + 112)), "tiatoolbox data/target_image.png"


def matvec_ceiling(model, runs: int) -> float:
    """Tokens/s of the language model's weight reads alone: one ``F.linear`` per weight matrix, one token."""
    import torch.nn.functional as F

    weights = [m.weight for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (".language_model." in f".{name}" or name == "lm_head")]
    x = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype) for w in weights}

    def once():
        t = time.perf_counter()
        with torch.inference_mode():
            for w in weights:
                F.linear(x[w.shape[1]], w)
        return time.perf_counter() - t

    once()
    return 1.0 / statistics.median(once() for _ in range(max(5, runs * 4)))


def measure(reasoner, image, question: str, n: int, runs: int) -> dict:
    from pathvlm.vlm.decode import decode_tokens

    messages = [{"role": "user", "content": question}]
    model = reasoner.model
    inputs, n_prompt = reasoner._prepare([image], messages)

    def plain_first():
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
        return time.perf_counter() - t

    def plain_all():
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert out.shape[1] - inputs["input_ids"].shape[1] == n
        return time.perf_counter() - t

    def chat():
        # exactly n tokens: the end-of-turn token is ignored for the measurement
        saved = reasoner._eos_ids
        reasoner._eos_ids = lambda: [-1]
        try:
            t = time.perf_counter()
            first = None
            pieces = 0
            for _ in reasoner.chat([image], messages, stream=True, max_new_tokens=n):
                pieces += 1
                if first is None:
                    first = time.perf_counter() - t
            return first, time.perf_counter() - t
        finally:
            reasoner._eos_ids = saved

    # token identity, checked without forcing the length (min_new_tokens masks the end token in generate)
    eos = reasoner._eos_ids()
    ref = model.generate(**inputs, max_new_tokens=n, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    same = list(decode_tokens(model, inputs, n, eos)) == ref
    plain_first(), plain_all(), chat()  # warm-up
    pf, pa, cf, ca = [], [], [], []
    for _ in range(runs):
        pf.append(plain_first())
        pa.append(plain_all())
        f, a = chat()
        cf.append(f)
        ca.append(a)
    med = statistics.median
    return {"prompt_tokens": n_prompt, "new_tokens": n, "greedy_tokens_identical": same,
            "plain_generate": {"first_token_s": med(pf), "tokens_per_s": n / med(pa)},
            "pathvlm_chat": {"first_token_s": med(cf), "tokens_per_s": n / med(ca)},
            "ratio_tokens_per_s": (n / med(ca)) / (n / med(pa)), "ratio_first_token": med(pf) / med(cf),
            "matvec_ceiling_tokens_per_s": matvec_ceiling(model, runs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathvlm-nano")
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--question", default="Is this benign colonic tissue? Answer yes or no.")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from pathvlm.chat import load_reasoner

    image, name = tile()
    print(f"model {args.model}; image {name}; {args.tokens} new tokens; median of {args.runs} runs\n")
    print(f"{'precision':>9} | {'threads':>7} | {'plain first (s)':>15} | {'chat first (s)':>14} | {'plain tok/s':>11} | "
          f"{'chat tok/s':>10} | {'ratio tok/s':>11} | {'ceiling tok/s':>13} | same tokens")
    results = {}
    for prec in args.precision:
        reasoner = load_reasoner(args.model, precision=prec)
        for th in args.threads:
            torch.set_num_threads(th)
            r = measure(reasoner, image, args.question, args.tokens, args.runs)
            results[f"{prec}-{th}"] = r
            print(f"{prec:>9} | {th:>7} | {r['plain_generate']['first_token_s']:>15.3f} | "
                  f"{r['pathvlm_chat']['first_token_s']:>14.3f} | {r['plain_generate']['tokens_per_s']:>11.1f} | "
                  f"{r['pathvlm_chat']['tokens_per_s']:>10.1f} | {r['ratio_tokens_per_s']:>11.2f} | "
                  f"{r['matvec_ceiling_tokens_per_s']:>13.1f} | "
                  f"{r['greedy_tokens_identical']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
