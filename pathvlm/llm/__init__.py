"""Language models for the PathVLM reasoner."""
