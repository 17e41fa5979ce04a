"""Contrastive losses for CLIP training: symmetric InfoNCE, its class-aware variant, and the CLIP-Adapter loss,
over the global batch (features gathered across processes with gradients). The rules: docs/training.md ("Loss")."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)
MIN_LOGIT_SCALE = 0.0
LOSS_KINDS = ("class_aware", "infonce")


# ----------------------------------------------------------------------------------------------------------
# cross-rank gather
# ----------------------------------------------------------------------------------------------------------
def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    world, _ = _world()
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _padded_all_gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    max_n = max(sizes)
    x = x.contiguous()
    if x.shape[0] < max_n:
        pad = x.new_zeros((max_n - x.shape[0],) + tuple(x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; backward = all-reduce(SUM) of the gathered gradient, then this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = _world()
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.start = sum(sizes[:rank])
        ctx.n = sizes[rank]
        return _padded_all_gather(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.start + ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (dim 0) from every rank, keeping gradients; identity in a single process."""
    world, _ = _world()
    if world == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (dim 0, e.g. labels) from every rank, without gradients; identity in one process."""
    world, _ = _world()
    if world == 1:
        return x
    with torch.no_grad():
        return _padded_all_gather(x, _gather_sizes(x.shape[0], x.device))


# ----------------------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------------------
def scale_from_logit_scale(logit_scale: torch.Tensor | float, max_logit_scale: float = MAX_LOGIT_SCALE
                           ) -> torch.Tensor:
    """exp(clamp(logit_scale, 0, max_logit_scale)): the multiplier of the cosine similarities."""
    if not torch.is_tensor(logit_scale):
        logit_scale = torch.tensor(float(logit_scale))
    return logit_scale.clamp(MIN_LOGIT_SCALE, max_logit_scale).exp()


def same_label_targets(row_labels: torch.Tensor, col_labels: torch.Tensor) -> torch.Tensor:
    """Targets for multi-positive cross-entropy: (label_i == label_j), each row normalised to sum 1.

    Rows without any positive (only possible in :func:`class_text_loss`, never on a square batch) stay zero."""
    mask = (row_labels.view(-1, 1) == col_labels.view(1, -1)).float()
    return mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float,
                     labels: Optional[torch.Tensor] = None, kind: str = "class_aware", gather: bool = True,
                     max_logit_scale: float = MAX_LOGIT_SCALE, normalize_images: bool = True) -> torch.Tensor:
    """Symmetric (class-aware) InfoNCE over the global batch.

    image_embeds, text_embeds: (B, D), pair i = (image i, its caption i). labels: (B,) class ids; needed for
    ``kind="class_aware"`` (without them the loss is plain InfoNCE). ``normalize_images=False`` takes the image
    side as given (Long-CLIP's reconstructed features). Returns the scalar global loss."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}: use one of {', '.join(LOSS_KINDS)}")
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2:
        raise ValueError(f"image_embeds {tuple(image_embeds.shape)} and text_embeds {tuple(text_embeds.shape)} "
                         "must both be (batch, dim)")
    img = F.normalize(image_embeds.float(), dim=-1) if normalize_images else image_embeds.float()
    txt = F.normalize(text_embeds.float(), dim=-1)
    if gather:
        img, txt = gather_with_grad(img), gather_with_grad(txt)
    scale = scale_from_logit_scale(logit_scale, max_logit_scale).to(img.device, img.dtype)
    logits = scale * img @ txt.t()
    if kind == "class_aware" and labels is not None:
        labels = labels.to(img.device).view(-1)
        if labels.shape[0] != image_embeds.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of {image_embeds.shape[0]}")
        if gather:
            labels = gather_no_grad(labels)
        targets = same_label_targets(labels, labels)
    else:
        targets = torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    return 0.5 * (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(logits.t(), targets.t()))


def class_text_loss(image_embeds: torch.Tensor, class_text_embeds: torch.Tensor, labels: torch.Tensor,
                    logit_scale: torch.Tensor | float, gather: bool = True,
                    max_logit_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """Bidirectional cross-entropy of images against class text embeddings (the CLIP-Adapter objective).

    image_embeds (B, D); class_text_embeds (C, D), row c = class id c; labels (B,) in [0, C)."""
    labels = labels.to(image_embeds.device).view(-1).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= class_text_embeds.shape[0]):
        raise ValueError(f"labels must lie in [0, {class_text_embeds.shape[0]}): got "
                         f"{int(labels.min())}..{int(labels.max())}")
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(class_text_embeds.float(), dim=-1)
    if gather:
        img = gather_with_grad(img)
        labels = gather_no_grad(labels)
    scale = scale_from_logit_scale(logit_scale, max_logit_scale).to(img.device, img.dtype)
    logits = scale * img @ txt.t()                               # (B, C)
    i2t = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    t2i_logits = logits.t()[present]                              # (P, B): each present class over the images
    t2i = _soft_cross_entropy(t2i_logits, same_label_targets(present, labels))
    return 0.5 * (i2t + t2i)


# ----------------------------------------------------------------------------------------------------------
# Long-CLIP
# ----------------------------------------------------------------------------------------------------------
LONG_CLIP_PCA_DIM = 32


def principal_reconstruction(features: torch.Tensor, dim: int = LONG_CLIP_PCA_DIM) -> torch.Tensor:
    """Long-CLIP's short-text image feature: centre the (B, D) batch, keep its top ``dim`` principal components
    (SVD), project back and add the mean (their training code's PCA, with its gradient through the SVD).

    When ``dim`` covers every component (a centred batch has rank at most min(B - 1, D)) the reconstruction is the
    input itself; it is returned as is: the same value and gradient, without an SVD whose gradient is unstable
    for a rank-deficient batch."""
    x = features.float()
    if dim >= min(x.shape[0] - 1, x.shape[1]):
        return x
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    components = vt[:dim].t()
    return centred @ components @ components.t() + mean


def long_clip_loss(image_embeds: torch.Tensor, long_text_embeds: torch.Tensor, short_text_embeds: torch.Tensor,
                   logit_scale: torch.Tensor | float, labels: Optional[torch.Tensor] = None,
                   kind: str = "class_aware", pca_dim: int = LONG_CLIP_PCA_DIM, gather: bool = True,
                   max_logit_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """Long-CLIP's objective: the long caption against the full (normalised) image feature, plus the short
    caption against `principal_reconstruction` of the normalised image features of this process's batch (not
    re-normalised, as in their code); the two contrastive losses add. Each term is `contrastive_loss` over the
    global batch (``kind`` as there)."""
    img = F.normalize(image_embeds.float(), dim=-1)
    long_term = contrastive_loss(img, long_text_embeds, logit_scale, labels=labels, kind=kind, gather=gather,
                                 max_logit_scale=max_logit_scale)
    short_term = contrastive_loss(principal_reconstruction(img, pca_dim), short_text_embeds, logit_scale,
                                  labels=labels, kind=kind, gather=gather, max_logit_scale=max_logit_scale,
                                  normalize_images=False)
    return long_term + short_term
