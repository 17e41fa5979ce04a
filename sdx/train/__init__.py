"""Training: typed arguments, the accelerate loop, outputs and cards, the ViT and CLIP jobs."""
