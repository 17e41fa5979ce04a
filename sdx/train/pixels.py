"""The pixel cache of both trainers: images pre-processed once and kept in memory when nothing random happens to
them (no augmentation), so later epochs and repeated validations skip decoding and the processor."""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def pixel_cache(hf_split, image_processor, budget_mb: float, desc: str = "pre-processing images",
                batch_size: int = 64) -> Optional[torch.Tensor]:
    """All images of `hf_split` pre-processed once (RGB, the processor's resize/crop/normalise), float32, when
    they fit in `budget_mb`; None otherwise (or when the budget is 0): then every batch is processed on the fly.
    The processor works per image, so cached and on-the-fly pixel values are identical."""
    n = len(hf_split)
    if budget_mb <= 0 or n == 0:
        return None
    images = hf_split.select_columns(["image"])
    first = image_processor(images=[images[0]["image"].convert("RGB")], return_tensors="pt")["pixel_values"]
    if first.numel() * 4 * n > budget_mb * 2 ** 20:
        logger.info("%s: %d images need %.0f MB > --pixel_cache_mb %g; processing per batch", desc, n,
                    first.numel() * 4 * n / 2 ** 20, budget_mb)
        return None
    out = torch.empty((n,) + tuple(first.shape[1:]), dtype=torch.float32)
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=n <= batch_size):
        chunk = images[start:start + batch_size]["image"]
        out[start:start + len(chunk)] = image_processor(images=[im.convert("RGB") for im in chunk],
                                                        return_tensors="pt")["pixel_values"]
    return out


class PixelBudget:
    """--pixel_cache_mb shared by the splits of one run, in the order they are cached (train first)."""

    def __init__(self, budget_mb: float):
        self.left_mb = float(budget_mb)

    def cache(self, hf_split, image_processor, desc: str) -> Optional[torch.Tensor]:
        pixels = pixel_cache(hf_split, image_processor, self.left_mb, desc=desc)
        if pixels is not None:
            self.left_mb -= pixels.numel() * 4 / 2 ** 20
        return pixels


def draw_flips(hflip: bool, vflip: bool) -> tuple[bool, bool]:
    """(flip horizontally, flip vertically) for one image: each flip asked for happens with probability 0.5, drawn
    from torch's global RNG, the horizontal one first; the one rule of the cached and the per-batch path."""
    return hflip and float(torch.rand(1)) < 0.5, vflip and float(torch.rand(1)) < 0.5


class CachedPixels(torch.utils.data.Dataset):
    """Rows of cached pixel values with their labels: {"pixel_values", "labels"}; `hflip` / `vflip` flip a row's
    pixel values as ``draw_flips`` draws them, the per-batch transform's rule. Flipping after the processor equals
    flipping before it for a resize without an off-centre crop (tested on the project's processors), so flips keep
    the cache."""

    def __init__(self, pixels: torch.Tensor, labels: Sequence[int], *, hflip: bool = False, vflip: bool = False):
        if len(pixels) != len(labels):
            raise ValueError(f"{len(pixels)} cached images for {len(labels)} labels")
        self.pixels, self.labels = pixels, torch.as_tensor(list(labels), dtype=torch.long)
        self.hflip, self.vflip = hflip, vflip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pixels = self.pixels[i]
        h, v = draw_flips(self.hflip, self.vflip)
        if h:
            pixels = pixels.flip(-1)
        if v:
            pixels = pixels.flip(-2)
        return {"pixel_values": pixels, "labels": self.labels[i]}
