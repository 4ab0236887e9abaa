"""Evaluation building blocks shared by the eval harness (``evals/``) and training-time evaluation."""
