#!/usr/bin/env bash
# Trains pathvlm-nano v2 on two organs: align -> SFT on nano_v2 (LC25000 colon + oral mucosa) from
# pathvlm-nano-v2-untrained (pathclip-nano-v2's tower); SFT on 1,600 rows (v1: 800), v1's other settings unchanged.
# GRPO=1 adds the GRPO stage (about 60 min more here; the bundled v2 was made without it). The stages' hooks read
# the val split; the held-out test split is read once afterwards (docs/training.md#pathvlm-nano-v2-two-organs).
#   bash train/recipes/vlm/train_nano_v2.sh        (about 75 min on 2 CPU cores)
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d runs/data/nano_v2 ] || pathvlm data build data_recipes/nano_v2.yaml --out runs/data/nano_v2
pathvlm train align --config train/recipes/vlm/nano_v2_align.yaml
pathvlm train sft --config train/recipes/vlm/nano_v2_sft.yaml
if [ "${GRPO:-0}" = 1 ]; then pathvlm train grpo --config train/recipes/vlm/nano_v2_grpo.yaml; fi
