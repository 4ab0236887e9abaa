"""PathVLM training stages: align (projector on captions), SFT (chain of thought) and GRPO (verifiable rewards)."""
