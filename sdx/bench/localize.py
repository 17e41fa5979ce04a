"""Text-guided localization: projected patch tokens scored against the image's class prompt (T0, T1) minus a
"flawless steel surface" prompt, upsampled to the mask. Targets: the SteelDefectX test images with a mask and
every external set with masks. The binarising threshold is chosen on the SteelDefectX validation images with a
mask and applied unchanged to every target; F1-max on a target itself is reported apart, as an oracle. Each
target carries its trivial baseline (every pixel a defect). Rules: docs/benchmark.md ("Localization")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdx import metrics as M
from sdx.bench.data import ExternalSet, ImageSet
from sdx.bench.models import BenchClip
from sdx.bench.zeroshot import CLASS_LEVELS
from sdx.data.levels import t0_prompt

if TYPE_CHECKING:
    from sdx.bench.tasks import Benchmark

NORMAL_PROMPT = "A photo of a flawless steel surface."
N_OVERLAYS = 4
STEEL_TARGET = "SteelDefectX test"
THRESHOLD_RULE = ("F1-max threshold on the SteelDefectX validation images with a mask (same model and prompt "
                  "level), applied unchanged here")


@dataclass
class Target:
    """Images with masks to localize on: their set, the masked rows, the masks, and the class prompt embeddings
    [n_classes, D] of a model at a level (None when the level has no text)."""

    name: str
    iset: ImageSet
    rows: list[int]
    masks: list[np.ndarray | None]
    class_embeddings: Callable[[BenchClip, str], np.ndarray | None]
    external: bool = False


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


def _square(iset: ImageSet, rows: list[int]) -> ImageSet:
    """The set as localization feeds it (ImageSet.square_view), its masked rows marked for patch tokens."""
    view = iset.square_view()
    view.patch_rows |= set(rows)
    return view


def steel_target(bench: Benchmark, split: str) -> Target:
    masks = bench.masks(split)
    rows = [i for i, m in enumerate(masks) if m is not None]

    def embed(enc: BenchClip, level: str):
        return bench.zero_shot.class_embeddings(enc, level, list(range(len(bench.class_names))))[0]
    return Target(STEEL_TARGET if split == "test" else f"SteelDefectX {split}", _square(bench.split(split), rows),
                  rows, masks, embed)


def external_target(bench: Benchmark, ext: ExternalSet) -> Target:
    texts = {"t0": [t0_prompt(c) for c in ext.classes], "t1": [ext.descriptions[c] for c in ext.classes]}

    def embed(enc: BenchClip, level: str):
        return bench.cache.texts(enc, texts[level])
    return Target(ext.iset.name, _square(ext.iset, ext.masked_rows), ext.masked_rows, ext.iset.masks(), embed,
                  external=True)


def pixel_scores(bench: Benchmark, enc: BenchClip, target: Target, level: str, shown: set[int] = frozenset()):
    """(scores, targets) over every mask pixel of ``target`` at prompt ``level``, and [(row, score map)] of the
    rows in ``shown``; None when the level has no text or the patches do not form a square grid."""
    E = target.class_embeddings(enc, level)
    if E is None or not target.rows:
        return None
    bench.cache.images(enc, target.iset)  # stores the patch tokens of the masked rows on a cache miss
    tokens = bench.cache.patch_tokens(enc, target.iset, target.rows)  # [N, P, D]
    g = round(np.sqrt(tokens.shape[1]))
    if g * g != tokens.shape[1]:
        return None
    normal = bench.cache.texts(enc, [NORMAL_PROMPT])[0]
    labels = target.iset.labels[target.rows]
    maps = torch.from_numpy(patch_logits(tokens, E[labels], normal).reshape(-1, 1, g, g))
    scores, targets, small = [], [], []
    for js, up in upsampled(maps, target.masks, target.rows):
        scores.append(up.reshape(-1))
        targets.append(np.stack([target.masks[target.rows[j]] for j in js]).reshape(-1))
        small += [(target.rows[j], up[t]) for t, j in enumerate(js) if target.rows[j] in shown]
    return np.concatenate(scores), np.concatenate(targets), small


def level_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float | None, baseline: dict) -> dict:
    """Pixel AUROC; F1 / IoU at the validation ``threshold`` (None without one); F1-max and its IoU (the oracle:
    the threshold tuned on these very pixels); and why the row does not beat the trivial ``baseline``."""
    m = M.localization_metrics(scores, targets)
    f1, iou = M.f1_iou_at(scores, targets, threshold) if threshold is not None else (None, None)
    below = []
    if m["pixel_auroc"] <= baseline["pixel_auroc"]:
        below.append(f"pixel AUROC {m['pixel_auroc']:.2f} <= {baseline['pixel_auroc']:.0f}")
    if f1 is not None and f1 <= baseline["f1"]:
        below.append(f"F1 {f1:.2f} <= all-positive F1 {baseline['f1']:.2f}")
    return {"pixel_auroc": m["pixel_auroc"], "threshold": threshold, "f1": f1, "iou": iou,
            "f1_max_oracle": m["f1_max"], "iou_oracle": m["iou"], "oracle_threshold": m["threshold"],
            "pixels": m["pixels"], "positive_pixels": m["positive_pixels"], "below_baseline": below}


def validation_thresholds(bench: Benchmark, enc: BenchClip, val: Target) -> dict[str, float | None]:
    """Per prompt level, the F1-max threshold on the validation pixels (None without validation masks)."""
    out: dict[str, float | None] = {}
    for lv in CLASS_LEVELS:
        got = pixel_scores(bench, enc, val, lv)
        ok = got is not None and got[1].any() and not got[1].all()
        out[lv] = M.f1_max(got[0], got[1])[1] if ok else None
    return out


def localize_model(bench: Benchmark, enc: BenchClip, target: Target, thresholds: dict, baseline: dict) -> dict:
    """One model on one target: {"t0": metrics, "t1": metrics} (a level without text is left out); the T0 score
    maps of a few images go to the overlay figure."""
    shown = overlay_rows(target.iset.labels, target.rows)
    res: dict[str, Any] = {}
    for lv in CLASS_LEVELS:
        got = pixel_scores(bench, enc, target, lv, shown)
        if got is None:
            continue
        scores, targets, small = got
        res[lv] = level_metrics(scores, targets, thresholds.get(lv), baseline)
        if lv == "t0" and small:
            key = (target.name if target.external else None, enc.label)
            bench.artifacts.setdefault("overlays", {})[key] = [
                (target.iset.image_names[r], target.iset.pil(r).convert("RGB"), m, target.masks[r]) for r, m in small]
    return res or {"skipped": "no prompt level with text, or the patch tokens do not form a square grid"}


def target_baseline(target: Target) -> dict | None:
    """The all-positive baseline of a target's mask pixels (None when they are all positive or all negative)."""
    pixels = sum(target.masks[r].size for r in target.rows)
    positive = sum(int(target.masks[r].sum()) for r in target.rows)
    if not 0 < positive < pixels:
        return None
    return {**M.all_positive_baseline(positive, pixels), "pixels": pixels, "positive_pixels": positive}


def run(bench: Benchmark) -> dict:
    targets = [steel_target(bench, "test")] + [external_target(bench, e) for e in bench.external_sets()]
    baselines = [target_baseline(t) if t.rows else None for t in targets]
    unusable = [t.name for t, b in zip(targets, baselines) if b is None]
    if len(unusable) == len(targets):
        return {"skipped": "no test image (and no external image) has a mask with defect and background pixels"}
    val = steel_target(bench, "validation")
    encoders = bench.encoders()
    thresholds = {e.label: validation_thresholds(bench, e, val) for e in encoders if e.can_localize}
    out: dict[str, Any] = {"threshold": {"rule": THRESHOLD_RULE, "validation_images": len(val.rows)},
                           "normal_prompt": NORMAL_PROMPT, "targets_without_masks": unusable, "targets": []}
    for target, baseline in zip(targets, baselines):
        if baseline is None:
            continue
        models = {e.label: localize_model(bench, e, target, thresholds[e.label], baseline) if e.label in thresholds
                  else {"skipped": "model has no vision_model/visual_projection (not CLIP-style)"} for e in encoders}
        out["targets"].append({"name": target.name, "external": target.external, "images": len(target.rows),
                               "images_without_mask": len(target.iset.keys) - len(target.rows),
                               "classes": len(set(target.iset.labels[target.rows].tolist())),
                               "baseline": baseline, "models": models})
    return out
