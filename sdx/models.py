"""Model construction for SteelDefectX: image classifiers (Hub id, local dir or size preset) and LoRA.

(The CLIP models of train_clip.py live in the section ``# ---- CLIP models ----`` at the end of this file.)

Image classifiers (train_vit.py)
--------------------------------
- ``load_image_classifier(model_name_or_path, class_names, ignore_mismatched_sizes=False)``: any
  ``AutoModelForImageClassification`` checkpoint (Hub id or local dir) with the dataset's label maps. Label rules:
  a checkpoint whose ``id2label`` names are the generic ``LABEL_i`` carries no class names and gets the dataset's
  (its head is loaded when its size matches, else it must be re-initialised); a checkpoint with real class names
  must list exactly the dataset's classes in the dataset's order (ids are what the head predicts), otherwise a
  ValueError lists both before any step, unless ``ignore_mismatched_sizes`` re-initialises the classification head
  for the dataset's classes.
- ``build_image_classifier(model_type, model_size, class_names, image_size=224, patch_size=16,
  config_overrides=None)``: a random initialisation from a preset: ``vit`` (tiny 192x12x3, small 384x12x6,
  base 768x12x12; the DeiT/ViT sizes), ``resnet`` (tiny = ResNet-18, small = ResNet-34, base = ResNet-50),
  ``convnext`` (tiny, small, base of the ConvNeXt paper). ``config_overrides`` ("k=v,k=v" or a dict) edits the
  config (e.g. ``hidden_size=96,num_hidden_layers=4``).
- ``load_or_build_image_processor``: the checkpoint's ``AutoImageProcessor``; for a random model (or a checkpoint
  without one) a ``ViTImageProcessor`` resizing to ``image_size`` with mean = std = 0.5, which is saved with the
  model so inference reads the same preprocessing.

LoRA (peft)
-----------
- ``find_lora_targets(model)``: leaf names of the model's own modules, in this order of preference:
  1. attention projections: ``nn.Linear`` whose leaf name is one of q_proj, k_proj, v_proj, query, key, value,
     qkv, in_proj (transformers 5 ViT uses q_proj/k_proj/v_proj);
  2. otherwise every ``nn.Linear`` outside the classification head (ConvNeXt: pwconv1, pwconv2);
  3. otherwise every ``nn.Conv2d`` with a kernel larger than 1x1 outside the head (ResNet's convolutions; peft
     matches leaf names, so 1x1 convolutions sharing such a leaf name, e.g. ResNet's ``convolution``, are adapted
     too).
- ``apply_lora(model, r, alpha, dropout, target_modules=None)``: wraps with ``peft.get_peft_model``; the
  classification head (``classifier_head_names``: top-level children holding the last Linear whose out_features is
  the number of labels) goes to ``modules_to_save`` so it is trained and saved. User-given targets that match no
  module raise a ValueError listing the model's Linear/Conv module names.
"""

from __future__ import annotations

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
    import json

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
    """An AutoModelForImageClassification from a Hub id / local dir, labelled with `class_names` (module rules)."""
    from transformers import AutoConfig, AutoModelForImageClassification

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
    """A randomly initialised classifier from the presets (module docstring)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, ResNetConfig, \
        ResNetForImageClassification, ViTConfig, ViTForImageClassification

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
    (mean = std = 0.5) when there is no checkpoint or it has no processor."""
    from transformers import AutoImageProcessor

    try:  # transformers 5 without torchvision: the PIL backend, named explicitly to avoid the fallback warning
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor

    if model_name_or_path:
        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path), True
        except Exception as exc:  # noqa: BLE001
            logger.warning("no image processor in %s (%s); building one for %d px", model_name_or_path, exc,
                           image_size)
    return ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5],
                             image_std=[0.5, 0.5, 0.5]), False


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
    """Leaf module names to adapt (module docstring, rules 1-3)."""
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
    from peft import LoraConfig, get_peft_model

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


# ---- CLIP models ----
# Owner: helper "clip" (issue 5). Everything below this line is the CLIP part of sdx.models; the part above is
# the ViT part. Rules of this section:
# * Loading: `load_clip(name_or_path)` takes a Hub id or a local dir. A dir written by train_clip.py may hold a
#   CLIP-Adapter (files CLIP_ADAPTER_CONFIG + CLIP_ADAPTER_WEIGHTS beside the frozen CLIP): it then returns a
#   `ClipWithAdapter`, which has the same get_image_features / get_text_features interface.
# * From scratch: `build_clip_from_scratch(size, texts)` with a size preset of CLIP_PRESETS (tiny / small / base)
#   and a byte-level BPE tokenizer trained locally on `texts` (no download) with CLIP's normaliser, pre-tokeniser,
#   "</w>" word suffix and special tokens (<|startoftext|> id 0, <|endoftext|> id 1 = eos = pad); every byte
#   symbol, with and without "</w>", is in the vocabulary, so no text ever maps to the unknown token. The text
#   config's eos_token_id is 1, so CLIP pools at the first <|endoftext|>. Texts longer than the model's
#   max_position_embeddings are truncated (presets: 128 tokens, enough for rendered T3).
# * Features: `encode_images` / `encode_texts` return L2-normalised embeddings; they accept models whose
#   get_*_features return a tensor or an output object (transformers 5: `.pooler_output`; else `.image_embeds` /
#   `.text_embeds`; else the first element).
# * LoRA: peft on q_proj / k_proj / v_proj / out_proj of the chosen towers (vision, text, both); everything else
#   frozen. Saved merged (plain CLIPModel) with the LoRA weights in the `lora/` subfolder.
# * CLIP-Adapter (Gao et al.): image feature f -> alpha * MLP(f) + (1 - alpha) * f, MLP = Linear(D, D/r) - ReLU
#   - Linear(D/r, D) - ReLU without biases; alpha 0.2 and reduction r 4 by default; CLIP itself frozen.
import json as _json
import math as _math
import re as _re
from pathlib import Path as _Path
from typing import Any as _Any, Iterable as _Iterable, Optional as _Optional

import torch as _torch
from torch import nn as _nn

CLIP_PRESETS: dict[str, dict[str, _Any]] = {
    # (hidden, layers, heads, mlp) per tower; image size and patch; shared projection dim
    "tiny": dict(text=(32, 2, 2, 64), vision=(32, 2, 2, 64), image_size=32, patch_size=16, projection_dim=32,
                 max_text_length=128),
    "small": dict(text=(128, 4, 4, 512), vision=(128, 4, 4, 512), image_size=64, patch_size=8,
                  projection_dim=128, max_text_length=128),
    "base": dict(text=(512, 12, 8, 2048), vision=(768, 12, 12, 3072), image_size=224, patch_size=16,
                 projection_dim=512, max_text_length=128),   # CLIP ViT-B/16 shapes (77 -> 128 text positions)
}
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_ADAPTER_CONFIG = "clip_adapter_config.json"
CLIP_ADAPTER_WEIGHTS = "clip_adapter.safetensors"
LORA_TOWERS = ("vision", "text", "both")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _train_bpe(word_counts: dict[str, int], vocab_size: int, min_frequency: int, base: list[str]
               ) -> tuple[list[str], list[tuple[str, str]]]:
    """Deterministic BPE over pre-tokenised words (CLIP style: the last symbol of a word carries "</w>").

    Repeatedly merges the most frequent adjacent pair (ties: the lexicographically smallest pair) until the
    vocabulary reaches `vocab_size` or no pair occurs `min_frequency` times. Returns (new tokens, merges)."""
    import heapq
    from collections import defaultdict

    words = []
    for word in sorted(word_counts):
        syms = list(word)
        syms[-1] += "</w>"
        words.append([syms, word_counts[word]])
    pair_counts: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, (syms, c) in enumerate(words):
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += c
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    known = set(base)
    tokens: list[str] = []
    merges: list[tuple[str, str]] = []
    while heap and len(base) + len(tokens) < vocab_size:
        neg, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:
            continue                                   # stale heap entry
        if -neg < min_frequency:
            break
        merged = pair[0] + pair[1]
        merges.append(pair)
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        touched: set[tuple[str, str]] = set()
        for wi in sorted(where.pop(pair, ())):
            syms, c = words[wi]
            for old in zip(syms, syms[1:]):
                pair_counts[old] -= c
                touched.add(old)
                where[old].discard(wi)
            out, k = [], 0
            while k < len(syms):
                if k + 1 < len(syms) and (syms[k], syms[k + 1]) == pair:
                    out.append(merged)
                    k += 2
                else:
                    out.append(syms[k])
                    k += 1
            words[wi][0] = out
            for new in zip(out, out[1:]):
                pair_counts[new] += c
                touched.add(new)
                where[new].add(wi)
        pair_counts.pop(pair, None)
        for t in touched:
            c = pair_counts.get(t, 0)
            if c > 0:
                heapq.heappush(heap, (-c, t))
            else:
                pair_counts.pop(t, None)
    return tokens, merges


def build_clip_tokenizer(texts: _Iterable[str], vocab_size: int = 2000, min_frequency: int = 1):
    """Train a CLIP-compatible byte-level BPE on `texts` and wrap it as a transformers CLIPTokenizer.

    CLIP's own normaliser (NFC, whitespace, lower case) and pre-tokeniser (CLIP's split regex, byte-level
    mapping) cut the texts into words; a deterministic BPE (:func:`_train_bpe`) learns the merges, so the same
    texts always give the same tokenizer (the `tokenizers` trainer breaks ties in hash order). Vocabulary:
    <|startoftext|> 0, <|endoftext|> 1, the 256 byte symbols with and without "</w>", then the merged tokens."""
    from collections import Counter

    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import CLIPTokenizer

    texts = [str(t) for t in texts if t is not None and str(t).strip()]
    if not texts:
        raise ValueError("build_clip_tokenizer needs at least one non-empty text")
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    counts: Counter = Counter()
    for text, n in Counter(texts).items():            # class-level texts repeat: split each distinct text once
        for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[w] += n
    counts.pop(CLIP_BOS, None)
    counts.pop(CLIP_EOS, None)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = [CLIP_BOS, CLIP_EOS] + alphabet + [ch + "</w>" for ch in alphabet]
    tokens, merges = _train_bpe(dict(counts), vocab_size, min_frequency, base)
    vocab = {tok: i for i, tok in enumerate(base + tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 1, "special token ids moved"
    return tokenizer


def _clip_image_processor(image_size: int):
    try:
        import torchvision  # noqa: F401
        from transformers import CLIPImageProcessor as _IP
    except ImportError:
        from transformers import CLIPImageProcessorPil as _IP
    return _IP(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_clip_from_scratch(size: str, texts: _Iterable[str], vocab_size: int = 2000,
                            max_text_length: _Optional[int] = None, image_size: _Optional[int] = None,
                            seed: _Optional[int] = None):
    """A randomly initialised CLIPModel of a size preset, with a locally trained tokenizer and its processor.

    Returns (model, processor); processor.tokenizer is the CLIPTokenizer, processor.image_processor resizes to
    the preset's image size (shortest edge, then centre crop)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    if size not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP size preset {size!r}: use one of {', '.join(CLIP_PRESETS)}")
    p = CLIP_PRESETS[size]
    tokenizer = build_clip_tokenizer(texts, vocab_size=vocab_size)
    image_size = int(image_size or p["image_size"])
    if image_size % p["patch_size"]:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {p['patch_size']}")
    th, tl, ta, tm = p["text"]
    vh, vl, va, vm = p["vision"]
    config = CLIPConfig(
        text_config=dict(hidden_size=th, num_hidden_layers=tl, num_attention_heads=ta, intermediate_size=tm,
                         vocab_size=len(tokenizer), max_position_embeddings=int(max_text_length or
                                                                                 p["max_text_length"]),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=va, intermediate_size=vm,
                           image_size=image_size, patch_size=p["patch_size"]),
        projection_dim=p["projection_dim"])
    if seed is not None:
        _torch.manual_seed(seed)
    model = CLIPModel(config)
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    processor = CLIPProcessor(image_processor=_clip_image_processor(image_size), tokenizer=tokenizer)
    return model, processor


def _fix_tokenizer_max_length(processor, model) -> None:
    tok = getattr(processor, "tokenizer", None)
    cfg = getattr(getattr(model, "config", None), "text_config", None)
    limit = getattr(cfg, "max_position_embeddings", None)
    if tok is not None and limit and (tok.model_max_length is None or tok.model_max_length > limit):
        tok.model_max_length = int(limit)


def load_clip(model_name_or_path: str, **kwargs):
    """(model, processor) from a Hub id or a local dir; a dir with a CLIP-Adapter gives a ClipWithAdapter."""
    from transformers import AutoModel, AutoProcessor

    path = _Path(str(model_name_or_path))
    if path.exists() and not path.is_dir():
        raise ValueError(f"--model_name_or_path {model_name_or_path}: a file, expected a Hub id or a directory")
    if path.is_dir() and (path / CLIP_ADAPTER_CONFIG).is_file():
        return ClipWithAdapter.from_pretrained(path, **kwargs)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'config.json'}: missing; --model_name_or_path must be a Hub id or a "
                                "directory written by save_pretrained")
    try:
        model = AutoModel.from_pretrained(str(model_name_or_path), **kwargs)
        processor = AutoProcessor.from_pretrained(str(model_name_or_path))
    except OSError as err:
        raise OSError(f"cannot load a CLIP model from {model_name_or_path!r} (no network here: use a local "
                      f"directory): {err}") from err
    for name in ("get_image_features", "get_text_features"):
        if not hasattr(model, name):
            raise TypeError(f"{model_name_or_path}: {type(model).__name__} has no {name}(); a CLIP-style dual "
                            "encoder is needed")
    _fix_tokenizer_max_length(processor, model)
    return model, processor


def _embedding_from_output(out: _Any, kind: str) -> _torch.Tensor:
    if _torch.is_tensor(out):
        return out
    for attr in ("pooler_output", f"{kind}_embeds"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    if isinstance(out, (tuple, list)) and out and _torch.is_tensor(out[0]):
        return out[0]
    raise TypeError(f"cannot find the {kind} embedding in a {type(out).__name__}")


def image_features(model, pixel_values: _torch.Tensor) -> _torch.Tensor:
    """Projected image embeddings (not normalised)."""
    return _embedding_from_output(model.get_image_features(pixel_values=pixel_values), "image")


def text_features(model, input_ids: _torch.Tensor, attention_mask: _Optional[_torch.Tensor] = None
                  ) -> _torch.Tensor:
    """Projected text embeddings (not normalised)."""
    return _embedding_from_output(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask),
                                  "text")


def encode_images(model, pixel_values: _torch.Tensor) -> _torch.Tensor:
    """L2-normalised image embeddings (B, D); works for CLIPModel, peft-wrapped CLIP and ClipWithAdapter."""
    return _torch.nn.functional.normalize(image_features(model, pixel_values).float(), dim=-1)


def encode_texts(model, input_ids: _torch.Tensor, attention_mask: _Optional[_torch.Tensor] = None
                 ) -> _torch.Tensor:
    """L2-normalised text embeddings (B, D)."""
    return _torch.nn.functional.normalize(text_features(model, input_ids, attention_mask).float(), dim=-1)


@_torch.no_grad()
def encode_text_list(model, tokenizer, texts: list[str], batch_size: int = 64, device=None) -> _torch.Tensor:
    """Normalised embeddings of a list of strings (tokenised with padding and truncation), (len(texts), D)."""
    device = device or next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                        return_tensors="pt")
        out.append(encode_texts(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return _torch.cat(out) if out else _torch.empty(0)


def get_logit_scale(model) -> _torch.Tensor:
    """The model's learnable log inverse temperature (CLIP's `logit_scale`), or ln(1/0.07) as a constant."""
    for obj in (model, getattr(model, "clip", None), getattr(model, "base_model", None)):
        ls = getattr(obj, "logit_scale", None) if obj is not None else None
        if ls is not None:
            return ls
    return _torch.tensor(_math.log(1 / 0.07))


def lora_target_regex(towers: str = "both", targets: _Iterable[str] = LORA_TARGETS) -> str:
    if towers not in LORA_TOWERS:
        raise ValueError(f"unknown --lora_towers {towers!r}: use one of {', '.join(LORA_TOWERS)}")
    tower = {"vision": "vision_model", "text": "text_model", "both": "(?:vision_model|text_model)"}[towers]
    return rf".*{tower}\.encoder\.layers\.\d+\.self_attn\.(?:{'|'.join(targets)})"


def apply_clip_lora(model, towers: str = "both", r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """Wrap `model` with peft LoRA on the attention projections of the chosen towers; the rest is frozen."""
    from peft import LoraConfig, get_peft_model

    pattern = lora_target_regex(towers)
    names = [n for n, _ in model.named_modules() if _re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"no attention projection ({', '.join(LORA_TARGETS)}) found in the {towers} tower(s) of "
                         f"{type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    return get_peft_model(model, config)


class ClipAdapter(_nn.Module):
    """CLIP-Adapter residual MLP on image features: alpha * MLP(f) + (1 - alpha) * f."""

    def __init__(self, embed_dim: int, reduction: int = 4, alpha: float = 0.2):
        super().__init__()
        if embed_dim < reduction or reduction < 1:
            raise ValueError(f"adapter: embed_dim {embed_dim} and reduction {reduction} give no hidden units")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"adapter alpha must lie in [0, 1], got {alpha}")
        self.embed_dim, self.reduction, self.alpha = int(embed_dim), int(reduction), float(alpha)
        self.fc = _nn.Sequential(_nn.Linear(embed_dim, embed_dim // reduction, bias=False), _nn.ReLU(inplace=True),
                                 _nn.Linear(embed_dim // reduction, embed_dim, bias=False), _nn.ReLU(inplace=True))

    def forward(self, x: _torch.Tensor) -> _torch.Tensor:
        return self.alpha * self.fc(x) + (1.0 - self.alpha) * x

    def config_dict(self) -> dict[str, _Any]:
        return {"embed_dim": self.embed_dim, "reduction": self.reduction, "alpha": self.alpha}


class ClipWithAdapter(_nn.Module):
    """A frozen CLIP plus a trainable ClipAdapter on its image features; same interface as CLIPModel for
    get_image_features / get_text_features (returning tensors), `logit_scale`, `config`."""

    def __init__(self, clip, adapter: ClipAdapter):
        super().__init__()
        self.clip, self.adapter = clip, adapter
        for p in self.clip.parameters():
            p.requires_grad_(False)

    @property
    def config(self):
        return self.clip.config

    @property
    def logit_scale(self):
        return self.clip.logit_scale

    def get_image_features(self, pixel_values=None, **kwargs) -> _torch.Tensor:
        with _torch.no_grad():
            f = _embedding_from_output(self.clip.get_image_features(pixel_values=pixel_values, **kwargs), "image")
        return self.adapter(f.float())

    def get_text_features(self, input_ids=None, attention_mask=None, **kwargs) -> _torch.Tensor:
        return _embedding_from_output(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                                  **kwargs), "text")

    def save_pretrained(self, save_directory, **kwargs) -> None:
        from safetensors.torch import save_file

        out = _Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(out, **kwargs)
        cfg = dict(self.adapter.config_dict(), type="clip-adapter")
        (out / CLIP_ADAPTER_CONFIG).write_text(_json.dumps(cfg, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()},
                  str(out / CLIP_ADAPTER_WEIGHTS))

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """(ClipWithAdapter, processor) from a dir written by save_pretrained (+ the processor beside it)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoProcessor

        path = _Path(path)
        cfg_file, w_file = path / CLIP_ADAPTER_CONFIG, path / CLIP_ADAPTER_WEIGHTS
        try:
            cfg = _json.loads(cfg_file.read_text())
            adapter = ClipAdapter(int(cfg["embed_dim"]), int(cfg["reduction"]), float(cfg["alpha"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{cfg_file}: bad CLIP-Adapter config ({err}); needs embed_dim, reduction, alpha"
                             ) from err
        if not w_file.is_file():
            raise FileNotFoundError(f"{w_file}: adapter weights missing")
        missing, unexpected = adapter.load_state_dict(load_file(str(w_file)), strict=False)
        if missing or unexpected:
            raise ValueError(f"{w_file}: weights do not match the config (missing {missing}, unexpected "
                             f"{unexpected})")
        clip = AutoModel.from_pretrained(str(path), **kwargs)
        processor = AutoProcessor.from_pretrained(str(path))
        _fix_tokenizer_max_length(processor, clip)
        return cls(clip, adapter), processor


def clip_embed_dim(model) -> int:
    cfg = getattr(model, "config", None)
    dim = getattr(cfg, "projection_dim", None)
    if dim is None:
        raise ValueError(f"{type(model).__name__}: config has no projection_dim")
    return int(dim)
