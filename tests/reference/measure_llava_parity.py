"""Print pathvlm's parity with the reference LLaVA code on the committed reference data (pathvlm's own venv):
the largest |logit difference|, how many greedy continuations are identical, and the prompt lengths with LLaVA's
tokenisation (pathvlm's) next to transformers' whole-prompt tokenisation.

    .venv/bin/python tests/reference/measure_llava_parity.py
"""
import json, os, sys, tempfile
sys.path.insert(0, "tests/reference")
import torch
import llava_layout as L
from safetensors.torch import load_file
tmp = tempfile.mkdtemp(); hub = f"{tmp}/hub"
os.environ.update(HF_HUB_CACHE=hub, HF_HUB_OFFLINE="1", PATHVLM_HOME=f"{tmp}/home")
import huggingface_hub.constants as c; c.HF_HUB_CACHE = hub
L.make_hub_snapshot(hub, L.VISION_TOWER_REPO, L.write_clip_tower(f"{tmp}/clip"))
ref = json.load(open("tests/reference/llava_reference.json")); T = load_file("tests/reference/llava_reference.safetensors")
from pathvlm.chat import load_reasoner
from transformers import LlavaProcessor
img = L.reference_image()
for fam in ("llama", "mistral"):
    r = load_reasoner(str(L.write_original_llava(f"{tmp}/{fam}", fam)))
    plain = LlavaProcessor(image_processor=r.processor.image_processor, tokenizer=r.processor.tokenizer, patch_size=r.processor.patch_size,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1)
    worst, same, diffs = 0.0, 0, []
    for name, case in ref["families"][fam]["cases"].items():
        msgs = ([{"role": "system", "content": case["system"]}] if case["system"] else []) + [{"role": ro, "content": t} for ro, t in case["turns"]] + [{"role": "user", "content": case["question"]}]
        inputs, n = r._prepare([img], msgs)
        with torch.inference_mode():
            lg = r.model(**inputs).logits[0]
        e = T[f"{fam}.{name}.logits"]
        worst = max(worst, float((lg[case["logit_rows"], :e.shape[1]] - e).abs().max()))
        g = r.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        same += g == case["greedy"]
        whole = plain(images=[img], text=case["prompt"], return_tensors="pt")["input_ids"].shape[1]
        diffs.append((name, n, whole))
    print(fam, "max|logit diff| %.2e" % worst, f"greedy identical {same}/{len(ref['families'][fam]['cases'])}", "prompt tokens (LLaVA/ours vs whole-prompt tokenisation):", diffs)
