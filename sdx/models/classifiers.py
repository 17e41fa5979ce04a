"""Image classifiers for train_vit.py: a checkpoint loaded with the dataset's labels, random presets (ViT, ResNet,
ConvNeXt), the image processor, LoRA targets and wrapping, parameter counts. The label and LoRA-target rules:
docs/training.md ("Models", "LoRA")."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

logger = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "query", "key", "value", "qkv", "in_proj")
MODEL_TYPES = ("vit", "resnet", "convnext")
MODEL_SIZES = ("tiny", "small", "base")
IMAGE_MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "vit": {
        "tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
        "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    },
    "resnet": {
        "tiny": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"),
        "small": dict(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[3, 4, 6, 3], layer_type="basic"),
        "base": dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                     layer_type="bottleneck"),
    },
    "convnext": {
        "tiny": dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3]),
        "small": dict(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 27, 3]),
        "base": dict(hidden_sizes=[128, 256, 512, 1024], depths=[3, 3, 27, 3]),
    },
}


def _generic_labels(id2label: Mapping[Any, str] | None) -> bool:
    return not id2label or all(re.fullmatch(r"LABEL_\d+", str(v)) for v in id2label.values())


def label_maps(class_names: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {i: str(n) for i, n in enumerate(class_names)}
    return id2label, {n: i for i, n in id2label.items()}


def parse_config_overrides(overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """"k=v,k=v" (values parsed as JSON when possible, e.g. lists "[2,2]" need no quoting) or a mapping."""
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    out: dict[str, Any] = {}
    # split on commas not inside brackets
    for part in re.split(r",(?![^\[]*\])", overrides):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"--config_overrides: {part!r} is not key=value")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


def classifier_head_names(model: torch.nn.Module) -> list[str]:
    """Top-level child names holding the classification head (the last Linear with out_features == num_labels)."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    base = getattr(model, "get_base_model", lambda: model)()
    last = None
    for name, mod in base.named_modules():
        if isinstance(mod, torch.nn.Linear) and (num_labels is None or mod.out_features == num_labels):
            last = name
    if last is None:
        raise ValueError(f"{type(base).__name__}: no Linear classification head with {num_labels} outputs found")
    return [last.split(".")[0]]


def reset_classifier_head(model: torch.nn.Module) -> None:
    """Re-initialise every Linear of the classification head (normal(0, initializer_range) or reset_parameters)."""
    std = getattr(model.config, "initializer_range", None)
    for head in classifier_head_names(model):
        for mod in getattr(model, head).modules():
            if isinstance(mod, torch.nn.Linear):
                if std is not None:
                    torch.nn.init.normal_(mod.weight, 0.0, std)
                    torch.nn.init.zeros_(mod.bias)
                else:
                    mod.reset_parameters()


def load_image_classifier(model_name_or_path: str, class_names: Sequence[str], *,
                          ignore_mismatched_sizes: bool = False, **kwargs: Any):
    """An AutoModelForImageClassification from a Hub id / local dir, labelled with `class_names` (label rules:
    docs/training.md, "Models")."""
    from transformers import AutoConfig, AutoModelForImageClassification  # heavy (~5 s): not needed for --help

    id2label, label2id = label_maps(class_names)
    local = str(model_name_or_path).startswith(("/", "./", "../", "~"))
    if local and not Path(model_name_or_path).expanduser().exists():
        raise FileNotFoundError(f"--model_name_or_path: model folder not found: {model_name_or_path}")
    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except Exception as exc:  # noqa: BLE001 - name the source
        raise OSError(f"--model_name_or_path {model_name_or_path}: cannot read a model config: {exc}") from exc
    ckpt_labels = [str(config.id2label[i]) for i in sorted(config.id2label, key=int)] if config.id2label else []
    reinit_head = False
    if not _generic_labels(config.id2label) and ckpt_labels != list(id2label.values()):
        if not ignore_mismatched_sizes:
            only_ckpt = sorted(set(ckpt_labels) - set(id2label.values()))[:10]
            only_data = sorted(set(id2label.values()) - set(ckpt_labels))[:10]
            raise ValueError(
                f"--model_name_or_path {model_name_or_path}: the model's labels differ from the dataset's "
                f"(model: {len(ckpt_labels)} labels, dataset: {len(id2label)}; only in the model: {only_ckpt}; "
                f"only in the dataset: {only_data}"
                + ("; same names in another order" if set(ckpt_labels) == set(id2label.values()) else "")
                + "). Pass --ignore_mismatched_sizes to re-initialise the classification head for the dataset.")
        reinit_head = True
    try:
        model = AutoModelForImageClassification.from_pretrained(
            model_name_or_path, num_labels=len(id2label), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=ignore_mismatched_sizes, **kwargs)
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "mismatch" in str(exc):
            raise ValueError(f"--model_name_or_path {model_name_or_path}: its classification head has "
                             f"{config.num_labels} outputs, the dataset {len(id2label)} classes; pass "
                             f"--ignore_mismatched_sizes to re-initialise the head") from exc
        raise
    out_features = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if out_features and out_features[-1] != len(id2label):
        raise ValueError(f"--model_name_or_path {model_name_or_path}: head has {out_features[-1]} outputs, the "
                         f"dataset {len(id2label)} classes; pass --ignore_mismatched_sizes")
    if reinit_head:
        reset_classifier_head(model)
        logger.warning("classification head of %s re-initialised for the dataset's %d classes",
                       model_name_or_path, len(id2label))
    return model


def build_image_classifier(model_type: str, model_size: str, class_names: Sequence[str], *, image_size: int = 224,
                           patch_size: int = 16, config_overrides: str | Mapping[str, Any] | None = None):
    """A randomly initialised classifier from the presets (IMAGE_MODEL_PRESETS)."""
    from transformers import (  # heavy (~5 s)
        ConvNextConfig,
        ConvNextForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    if model_type not in IMAGE_MODEL_PRESETS:
        raise ValueError(f"--model_type {model_type!r}: one of {list(IMAGE_MODEL_PRESETS)}")
    if model_size not in IMAGE_MODEL_PRESETS[model_type]:
        raise ValueError(f"--model_size {model_size!r}: one of {list(IMAGE_MODEL_PRESETS[model_type])}")
    id2label, label2id = label_maps(class_names)
    kw = dict(IMAGE_MODEL_PRESETS[model_type][model_size])
    kw.update(parse_config_overrides(config_overrides))
    common = dict(num_labels=len(id2label), id2label=id2label, label2id=label2id)
    if model_type == "vit":
        config = ViTConfig(image_size=image_size, patch_size=patch_size, **kw, **common)
        return ViTForImageClassification(config)
    if model_type == "resnet":
        kw.setdefault("depths", [2, 2, 2, 2])
        return ResNetForImageClassification(ResNetConfig(**kw, **common))
    kw.setdefault("num_stages", len(kw.get("depths", [3, 3, 9, 3])))
    return ConvNextForImageClassification(ConvNextConfig(**kw, **common))


def load_or_build_image_processor(model_name_or_path: str | None, image_size: int = 224):
    """(processor, found): the checkpoint's AutoImageProcessor, or a ViTImageProcessor resizing to `image_size`
    (mean = std = 0.5) when there is no checkpoint or it has no processor. The PIL processor is named explicitly:
    transformers 5 without torchvision would fall back to it with a warning."""
    from transformers import AutoImageProcessor, ViTImageProcessorPil  # heavy (~5 s): not needed for --help

    if model_name_or_path:
        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path), True
        except Exception as exc:  # noqa: BLE001
            logger.warning("no image processor in %s (%s); building one for %d px", model_name_or_path, exc,
                           image_size)
    return ViTImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5],
                                image_std=[0.5, 0.5, 0.5], do_convert_rgb=True), False


def convert_to_rgb(image_processor, config) -> None:
    """Make `image_processor` turn grayscale (and RGBA, CMYK) images into RGB when the model takes 3 channels, so
    the processor saved beside the model works on an `L` image (without it: "mean must have 1 elements")."""
    channels = getattr(config, "num_channels", None) or getattr(getattr(config, "vision_config", None),
                                                                 "num_channels", 3)
    if channels == 3 and hasattr(image_processor, "do_convert_rgb") and not image_processor.do_convert_rgb:
        image_processor.do_convert_rgb = True


def processor_image_size(processor) -> tuple[int, int]:
    """(height, width) the processor produces."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    if not isinstance(size, (dict, int)):  # transformers 5 SizeDict
        size = {k: getattr(size, k, None) for k in ("height", "width", "shortest_edge")}
    if isinstance(size, dict):
        size = {k: v for k, v in size.items() if v is not None}
    if isinstance(size, dict) and "height" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    if isinstance(size, int):
        return size, size
    raise ValueError(f"cannot read the output size of {type(processor).__name__}: size={size!r}")


# ------------------------------------------------------------------------------------------------ LoRA


def _module_names(model: torch.nn.Module, types=(torch.nn.Linear, torch.nn.Conv2d)) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, types)]


def find_lora_targets(model: torch.nn.Module) -> list[str]:
    """Leaf module names to adapt: attention projections, else Linear outside the head, else Conv2d larger than 1x1
    (docs/training.md, "LoRA")."""
    heads = set(classifier_head_names(model))

    def outside_head(name: str) -> bool:
        return name.split(".")[0] not in heads

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and outside_head(n)]
    attn = sorted({n.rsplit(".", 1)[-1] for n, _ in linears if n.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS})
    if attn:
        return attn
    if linears:
        return sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
    convs = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and outside_head(n) and max(m.kernel_size) > 1]
    if convs:
        return sorted({n.rsplit(".", 1)[-1] for n in convs})
    raise ValueError(f"{type(model).__name__}: no Linear or Conv2d module to adapt with LoRA")


def apply_lora(model: torch.nn.Module, *, r: int = 8, alpha: int = 16, dropout: float = 0.0,
               target_modules: Sequence[str] | None = None):
    """Wrap `model` with peft LoRA; the classification head is fully trained (modules_to_save)."""
    from peft import LoraConfig, get_peft_model  # heavy, and needed only with --use_lora

    heads = classifier_head_names(model)
    if target_modules:
        names = _module_names(model)
        matched = [n for n in names for t in target_modules if n == t or n.endswith("." + t)]
        if not matched:
            listing = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ValueError(f"--lora_target_modules {list(target_modules)} match no module of "
                             f"{type(model).__name__}; its Linear/Conv2d module names are {listing}")
        targets = list(target_modules)
    else:
        targets = find_lora_targets(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=heads)
    peft_model = get_peft_model(model, config)
    logger.info("LoRA on %s (r=%d, alpha=%d), head %s trained", targets, r, alpha, heads)
    return peft_model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
