"""How close a GGUF export of a reasoner's language model is to the torch model, read two ways.

    python benchmarks/gguf_logits.py ~/.cache/pathvlm/gguf/*.gguf [--model pathvlm-nano]

For each GGUF file (written by ``pathvlm.vlm.gguf_export``, e.g. by ``load_reasoner(..., quantize="q8_0")``, which
caches it under ``$PATHVLM_HOME/gguf/``), the next-token logits after a fixed text prompt, against the torch
model's (fp32, LoRA merged), as cosine similarity and whether the top token agrees:

- read back by transformers' GGUF loader (its own dequantisation, then torch);
- decoded by llama.cpp from the same prompt's input embeddings (where llama-cpp-python is installed).

The two readers agreeing with each other and not with fp32 means the format loses precision; the two
disagreeing means one of them (or the writer) is wrong.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROMPT = "The crypts are straight, regular and evenly spaced. These features are those of"


def cosine(a, b) -> float:
    import torch

    return float(torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="GGUF files of the model's language model")
    ap.add_argument("--model", default="pathvlm-nano", help="the reasoner the files were exported from")
    ap.add_argument("--prompt", default=PROMPT)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from pathvlm.chat import load_reasoner

    fp = load_reasoner(args.model)
    ids = torch.tensor([fp.processor.tokenizer.encode(args.prompt, add_special_tokens=False)])
    with torch.inference_mode():
        lm = fp.model.model.language_model
        ref = fp.model.lm_head(lm(input_ids=ids).last_hidden_state)[0, -1]
        embeds = lm.embed_tokens(ids)[0]
    try:
        from pathvlm.vlm.llamacpp_lm import LlamaCppLM, llama_cpp_module

        llama_cpp_module()
    except Exception as e:  # noqa: BLE001 - optional: report why the column is empty
        LlamaCppLM, why = None, str(e).splitlines()[0]
    print(f"{args.model}; prompt {ids.shape[1]} tokens; cosine of next-token logits to fp32 (top token same?)")
    print("| file | transformers reads it | llama.cpp decodes it |")
    print("|---|---|---|")
    for f in map(Path, args.files):
        m = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32)
        with torch.inference_mode():
            tr = m(input_ids=ids).logits[0, -1]
        del m
        cell = f"{cosine(tr, ref):.4f} ({'yes' if int(tr.argmax()) == int(ref.argmax()) else 'no'})"
        if LlamaCppLM is not None:
            got = LlamaCppLM(f, 512).prefill(embeds)[0]
            lc = f"{cosine(got, ref):.4f} ({'yes' if int(got.argmax()) == int(ref.argmax()) else 'no'})"
        else:
            lc = f"not installed: {why}"
        print(f"| {f.name} | {cell} | {lc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
