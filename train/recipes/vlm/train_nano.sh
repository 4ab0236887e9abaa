#!/usr/bin/env bash
# Reproduces the bundled pathvlm-nano: align -> SFT -> GRPO on the nano data, then bundles the adapter.
#   bash train/recipes/vlm/train_nano.sh        (about an hour on 2 CPU cores)
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d runs/data/nano ] || pathvlm data build data_recipes/nano.yaml --out runs/data/nano
pathvlm train align --config train/recipes/vlm/nano_align.yaml
pathvlm train sft --config train/recipes/vlm/nano_sft.yaml
pathvlm train grpo --config train/recipes/vlm/nano_grpo.yaml
# align's own hook asks 96 questions with 80 new tokens; ask it the 192 questions the later stages are scored on
python -m train.vlm.evaluate runs/vlm/nano-align --max-new-tokens 160 --samples 192
python -m train.vlm.bundle runs/vlm/nano-align runs/vlm/nano-sft runs/vlm/nano-grpo
