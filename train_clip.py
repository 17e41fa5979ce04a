#!/usr/bin/env python
"""Train a CLIP model on SteelDefectX captions (T0-T4 or mixed): full fine-tuning, LoRA or the CLIP-Adapter.

The work is done by ``sdx.train.clip`` through the shared skeleton and loop of sdx.train; every rule (caption
levels and fallbacks, methods, loss, zero-shot validation, outputs) is in docs/training.md. Examples::

    python train_clip.py --data_dir synthetic --output_dir runs/clip-t2 --caption_level t2
    python train_clip.py --data_dir SteelDefectX --model_name_or_path openai/clip-vit-base-patch16 \\
        --recipe paper --caption_level t3 --output_dir runs/clip-adapter-t3   # CLIP-Adapter, Adam 1e-4, 20 epochs
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 train_clip.py ...   # two processes
"""

from __future__ import annotations

from sdx.train.clip import main

if __name__ == "__main__":
    main()
