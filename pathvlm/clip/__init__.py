"""PathCLIP: image-text encoders on open_clip (and transformers' CLIPModel for PLIP-style folders)."""
