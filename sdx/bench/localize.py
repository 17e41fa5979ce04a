"""Text-guided localization: projected patch tokens scored against the image's class prompt (T0, T1) minus a
"flawless steel surface" prompt, upsampled to the mask; pixel AUROC, F1-max and IoU over the test masks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdx import metrics as M
from sdx.bench.models import BenchClip
from sdx.bench.zeroshot import CLASS_LEVELS

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

NORMAL_PROMPT = "A photo of a flawless steel surface."
N_OVERLAYS = 4


def overlay_rows(labels: np.ndarray, rows: list[int]) -> set[int]:
    """Rows drawn in the overlay figure: the first masked image of each class (distinct classes first)."""
    firsts: dict[int, int] = {}
    for r in rows:
        firsts.setdefault(int(labels[r]), r)
    return set((list(firsts.values()) + rows)[:N_OVERLAYS])


def patch_logits(tokens: np.ndarray, e_cls: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """cos(patch, class prompt) - cos(patch, NORMAL_PROMPT) [N, P]: the logit of the 2-way softmax "defect vs
    flawless" (monotone in its probability, without its saturation ties)."""
    return (np.einsum("npd,nd->np", tokens, e_cls) - tokens @ normal).astype(np.float32)


def upsampled(maps: torch.Tensor, masks: list[np.ndarray], rows: list[int]):
    """Yield (positions in ``rows``, score maps bilinearly upsampled to the masks' size) per distinct mask size."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for j, r in enumerate(rows):
        by_size.setdefault(masks[r].shape, []).append(j)
    for shape, js in by_size.items():
        up = torch.nn.functional.interpolate(maps[js], size=shape, mode="bilinear", align_corners=False)
        yield js, up[:, 0].numpy()


def level_scores(bench: Benchmark, enc: BenchClip, tokens: np.ndarray, normal: np.ndarray, level: str,
                 rows: list[int], shown: set[int]) -> tuple[dict, list]:
    """(pixel metrics of one prompt level, [(row, upsampled score map)] of the rows in ``shown``)."""
    test, masks = bench.split("test"), bench.test_masks()
    E, _ = bench.zero_shot.class_embeddings(enc, level, list(range(len(bench.class_names))))
    g = round(np.sqrt(tokens.shape[1]))
    maps = torch.from_numpy(patch_logits(tokens, E[test.labels[rows]], normal).reshape(-1, 1, g, g))
    scores, targets, small = [], [], []
    for js, up in upsampled(maps, masks, rows):
        scores.append(up.reshape(-1))
        targets.append(np.stack([masks[rows[j]] for j in js]).reshape(-1))
        small += [(rows[j], up[t]) for t, j in enumerate(js) if rows[j] in shown]
    scores_all, targets_all = np.concatenate(scores), np.concatenate(targets)
    if targets_all.all() or not targets_all.any():
        return {"available": False, "reason": "masks are all positive or all negative"}, []
    return M.localization_metrics(scores_all, targets_all), small


def localize_model(bench: Benchmark, enc: BenchClip, rows: list[int]) -> dict:
    if not enc.can_localize:
        return {"skipped": "model has no vision_model/visual_projection (not CLIP-style)"}
    test, masks = bench.split("test"), bench.test_masks()
    bench.cache.images(enc, test)  # stores the patch tokens of the masked rows on a cache miss
    tokens = bench.cache.patch_tokens(enc, test, rows)  # [N, P, D]
    g = round(np.sqrt(tokens.shape[1]))
    if g * g != tokens.shape[1]:
        return {"skipped": f"{tokens.shape[1]} patch tokens do not form a square grid"}
    normal = bench.cache.texts(enc, [NORMAL_PROMPT])[0]
    res: dict[str, Any] = {"images": len(rows), "grid": [g, g], "normal_prompt": NORMAL_PROMPT}
    shown = overlay_rows(test.labels, rows)
    for lv in CLASS_LEVELS:
        res[lv], small = level_scores(bench, enc, tokens, normal, lv, rows, shown)
        if lv == "t0" and small:
            bench.artifacts.setdefault("overlays", {})[enc.label] = [
                (test.image_names[r], test.pil(r).convert("RGB"), m, masks[r]) for r, m in small]
    return res


def run(bench: Benchmark) -> dict:
    rows = [i for i, m in enumerate(bench.test_masks()) if m is not None]
    if not rows:
        return {"skipped": "no test image has a mask"}
    return {enc.label: localize_model(bench, enc, rows) for enc in bench.encoders()}
