"""Data recipes: public pathology image-text sources into clean, deduplicated, leakage-free sets."""
