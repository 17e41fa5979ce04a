"""The main job's models learn: the demo preset's vision model, trained as the demo trains it on the smoke preset's
synthetic data (12 train + 6 val images per class, 25 classes, chance 4 %), and the demo's T0 CLIP, trained exactly
as the demo trains it (its own data, 60 + 10 per class: on the smoke data's 270 images 30 epochs stay at chance),
each beat chance by a margin measured over seeds 1-3 (docs/training.md, "The demo's models"). Fails when learning
breaks (a loss, an optimiser, a label or a prompt mix-up), not only when the plumbing does.

    python tests/test_learning.py 1 2 3      # the figures behind the margins, one line per seed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sdx import pipeline
from sdx.data.synthetic import DEFAULT_CLASSES, default_dataset_dir
from sdx.train import clip as train_clip
from sdx.train import vit as train_vit

CHANCE = 100.0 / len(DEFAULT_CLASSES)
# test accuracy (percent) each model must reach: chance plus a margin below the lowest of seeds 1-3 (vision 40.7,
# 22.0, 26.7 on 150 test images, where one image is 0.67 points; CLIP T0 28.8, 30.4, 26.4 on 250 test images)
VISION_FLOOR = CHANCE + 12.0
CLIP_FLOOR = CHANCE + 15.0


def _settings(seed: int, data: str) -> pipeline.PipelineArguments:
    """The demo preset (models, image size, epochs) on the smoke preset's synthetic data or its own."""
    return pipeline.PipelineArguments(preset="demo", seed=seed, synthetic_size=list(pipeline.PRESETS[data][
        "synthetic_size"]), overwrite_output_dir=True)


def _data_dir(s: dict) -> str:
    n_train, n_val = s["synthetic_size"]
    return str(default_dataset_dir(train_per_class=n_train, val_per_class=n_val, progress=False))


def learn_vision(out: Path, seed: int) -> float:
    """Test accuracy (percent) of the demo's vision-only model trained from random weights."""
    args = _settings(seed, "smoke")
    s = args.settings()
    return train_vit.main(pipeline._vit_argv(args, s, _data_dir(s), out / "vit"))["test_accuracy"]


def learn_clip(out: Path, seed: int) -> float:
    """Test zero-shot T0 accuracy (percent) of the demo's CLIP trained on T0 captions from random weights."""
    args = _settings(seed, "demo")
    s = args.settings()
    return train_clip.main(pipeline._clip_argv(args, s, _data_dir(s), out / "clip_t0", "t0", []))["test_t0_accuracy"]


@pytest.mark.slow
def test_demo_vision_model_beats_chance(tmp_path):
    acc = learn_vision(tmp_path, seed=1)
    assert acc >= VISION_FLOOR, (acc, CHANCE)


@pytest.mark.slow
def test_demo_clip_beats_chance(tmp_path):
    acc = learn_clip(tmp_path, seed=1)
    assert acc >= CLIP_FLOOR, (acc, CHANCE)


if __name__ == "__main__":
    import tempfile

    for seed in [int(a) for a in sys.argv[1:]] or [1]:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps({"seed": seed, "chance": round(CHANCE, 2), "vision": learn_vision(Path(tmp), seed),
                              "clip_t0": learn_clip(Path(tmp), seed)}), flush=True)
