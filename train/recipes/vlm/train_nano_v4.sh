#!/usr/bin/env bash
# Trains pathvlm-nano v4: train_nano_v2.sh on pathclip-nano-v4's image tower (colon + oral mucosa, histology
# augmentations, UniCL loss), from pathvlm-nano-v4-untrained; every other setting as v2.
# The stages' hooks read the val split; the held-out test split is read once afterwards
# (docs/training.md#pathvlm-nano-v4).
#   bash train/recipes/vlm/train_nano_v4.sh        (about 75 min on 2 CPU cores)
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ -d runs/data/nano_v2 ] || pathvlm data build data_recipes/nano_v2.yaml --out runs/data/nano_v2
pathvlm train align --config train/recipes/vlm/nano_v4_align.yaml
pathvlm train sft --config train/recipes/vlm/nano_v4_sft.yaml
