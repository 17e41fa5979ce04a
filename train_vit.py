#!/usr/bin/env python
"""Train a vision-only SteelDefectX classifier (benchmark task 1): ViT by default, ResNet / ConvNeXt too.

The work is done by ``sdx.train.vit`` through the shared skeleton and loop of sdx.train; every rule is in
docs/training.md. Examples::

    # a small ViT from scratch on a local copy of the data
    python train_vit.py --data_dir /data/SteelDefectX --output_dir runs/vit-tiny --model_size tiny \\
        --image_size 224 --hflip --vflip --random_resized_crop

    # the paper's recipe (SGD 0.1, /10 every 30 epochs, 100 epochs) on a pretrained checkpoint, 4 GPUs, bf16
    accelerate launch --num_processes 4 train_vit.py --recipe paper --model_name_or_path google/vit-base-patch16-224 \\
        --ignore_mismatched_sizes --data_dir /data/SteelDefectX --output_dir runs/vit-b16 --mixed_precision bf16

    # LoRA, merged on save, pushed to the Hub
    python train_vit.py --model_name_or_path ./vit-b16 --use_lora --merge_lora --data_dir ... --output_dir runs/lora \\
        --push_to_hub --hub_model_id me/sdx-vit-lora
"""

from __future__ import annotations

from sdx.train.vit import main

if __name__ == "__main__":
    main()
