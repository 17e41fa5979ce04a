"""Training: typed arguments, the one run skeleton, the accelerate loop, checkpoints, outputs and cards, the pixel
cache, the CLIP losses, and the ViT and CLIP jobs (docs/training.md)."""
