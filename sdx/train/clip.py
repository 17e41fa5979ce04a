"""CLIP training on SteelDefectX captions (train_clip.py): its arguments, caption data, methods (full, LoRA,
CLIP-Adapter), zero-shot validation and the `Job` hooks the shared skeleton (sdx.train.job) runs. What it does and
writes: docs/training.md."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from sdx.data import levels as T
from sdx.data.naming import describe_data
from sdx.metrics import accuracy, mean_class_accuracy
from sdx.models.classifiers import convert_to_rgb
from sdx.models.clip import (
    BASE_SUBFOLDER,
    CLIP_ADAPTER_CONFIG,
    CLIP_ADAPTER_WEIGHTS,
    KEEP_POSITIONS,
    TRUNCATION_WARNING_SHARE,
    ClipAdapter,
    ClipWithAdapter,
    TruncationCounter,
    apply_clip_lora,
    base_reference,
    build_clip_from_scratch,
    clip_embed_dim,
    encode_images,
    encode_texts,
    format_truncation,
    get_logit_scale,
    image_features,
    keep_position_rows,
    load_clip,
    model_lineage,
    release_position_rows,
    set_text_max_length,
    stretch_text_positions,
    text_features,
    text_max_length,
    text_positions,
    truncation_warnings,
    update_lineage,
    zero_shot_predict,
)
from sdx.models.prompts import caption_mean_embeddings, distinct_captions
from sdx.train.args import (
    DataArguments,
    JobArguments,
    TrainingArguments,
    arg_help,
    check_ranges,
    parse_job_args,
    with_defaults,
)
from sdx.train.job import Job, run_job
from sdx.train.losses import LONG_CLIP_PCA_DIM, class_text_loss, contrastive_loss, long_clip_loss
from sdx.train.outputs import text_budget_section
from sdx.train.pixels import PixelBudget
from sdx.train.runmeta import weights_origin

logger = logging.getLogger(__name__)

CAPTION_LEVELS = ("t0", "t1", "t2", "t3", "t4", "mixed")
CLASS_PROMPT_SOURCES = {"t0": f"the template '{T.T0_TEMPLATE.format('{class}')}'", "t1": "the class description"}
METHODS = ("full", "lora", "adapter")
EVAL_METRICS = ("own_accuracy", "own_macc", *(f"{lv}_{m}" for lv in (*T.LEVELS, "mixed") for m in ("accuracy", "macc")))
RECIPES = {"paper": {"method": "adapter", "optimizer": "adam", "learning_rate": 1e-4, "num_train_epochs": 20,
                     "lr_scheduler_type": "constant"}}   # the paper's CLIP-Adapter recipe
DESCRIPTION = (
    "Contrastive CLIP training on SteelDefectX captions (T0-T4 or mixed): full fine-tuning, LoRA or the "
    "CLIP-Adapter, with zero-shot validation each epoch (T0 and T1 class prompts and the training level's own, "
    "which picks the kept epoch by default). `--method adapter` alone keeps "
    "this trainer's defaults; `--recipe paper` is the paper's CLIP-Adapter recipe.")


# ----------------------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------------------
def caption_level(value: str) -> str:
    """A --caption_level value normalised: t0..t4 (aliases of sdx.data.levels accepted) or 'mixed'."""
    v = str(value).strip().lower()
    return v if v == "mixed" else T.normalize_level(v)


@dataclass
class ClipDataArguments(DataArguments):
    """Data of train_clip.py."""

    caption_level: str = field(default="t2", metadata=arg_help(
        "training text: t0, t1, t2, t3, t4 (aliases accepted) or mixed (one level drawn per example per epoch)"))
    annotate_missing: bool = field(default=False, metadata=arg_help(
        "compute missing T3/T4 from masks (sdx.annotate.engine) instead of falling back to T1"))
    allow_caption_fallback: bool = field(default=False, metadata=arg_help(
        "train even when no training record has the --caption_level text (every caption is then a fallback: "
        "T2 -> T4 -> T1, T3/T4 -> T1); without it such a run stops before training. Partial fallbacks are always "
        "allowed, warned about and recorded (caption_levels_used)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.caption_level = caption_level(self.caption_level)
        except ValueError as err:
            raise ValueError(f"--caption_level: {err} or 'mixed'") from None


@dataclass
class ClipModelArguments:
    """Model, method, loss and evaluation of train_clip.py."""

    _argument_group_name = "model, method and evaluation"

    model_name_or_path: Optional[str] = field(default=None, metadata=arg_help(
        "Hub id or local dir of a CLIP-style model (get_image_features / get_text_features) with its processor; "
        "without it a random --model_size preset is built"))
    model_size: Literal["tiny", "small", "base"] = field(default="tiny", metadata=arg_help(
        "size preset for a model from scratch (tiny: 32-dim, 2 layers, 32 px; small: 128-dim, 4 layers, 64 px; "
        "base: CLIP ViT-B/16 shapes)"))
    tokenizer_vocab_size: int = field(default=2000, metadata=arg_help(
        "BPE vocabulary size of the tokenizer trained for a model from scratch"))
    image_size: Optional[int] = field(default=None, metadata=arg_help(
        "image size of a model from scratch (None: the preset's)"))
    vision_config_overrides: Optional[str] = field(default=None, metadata=arg_help(
        "vision-tower config of a model from scratch in place of the preset's, e.g. 'patch_size=8,hidden_size=64'"))
    method: Literal["full", "lora", "adapter"] = field(default="full", metadata=arg_help(
        "full: both towers (+ freezing flags); lora: peft LoRA; adapter: frozen CLIP + CLIP-Adapter. The method "
        "changes no other flag: --recipe paper gives the paper's adapter recipe (Adam 1e-4, 20 epochs, constant)"))
    freeze_vision_model: bool = field(default=False, metadata=arg_help("method full: freeze the vision tower"))
    freeze_text_model: bool = field(default=False, metadata=arg_help("method full: freeze the text tower"))
    lora_towers: Literal["vision", "text", "both"] = field(default="both", metadata=arg_help(
        "method lora: towers adapted"))
    lora_r: int = field(default=8, metadata=arg_help("LoRA rank"))
    lora_alpha: int = field(default=16, metadata=arg_help("LoRA alpha"))
    lora_dropout: float = field(default=0.0, metadata=arg_help("LoRA dropout"))
    merge_lora: bool = field(default=True, metadata=arg_help(
        "method lora: save the merged CLIPModel (the LoRA weights alone in lora/); --no_merge_lora saves only the "
        "LoRA weights in peft's format, naming the base (a random-init base is saved once in base/)"))
    adapter_alpha: float = field(default=0.2, metadata=arg_help("CLIP-Adapter residual ratio"))
    adapter_reduction: int = field(default=4, metadata=arg_help("CLIP-Adapter bottleneck reduction"))
    loss: Literal["class_aware", "infonce", "long_clip"] = field(default="class_aware", metadata=arg_help(
        "contrastive loss: class_aware (same-class pairs are positives), symmetric InfoNCE, or long_clip "
        "(Long-CLIP's objective: the caption against the image feature plus a short caption, "
        "--long_clip_short_level, against the image feature's top principal components; class-aware targets)"))
    long_clip_short_level: Literal["t0", "t1"] = field(default="t0", metadata=arg_help(
        "--loss long_clip: the short caption (t0 class-name template, as the test prompts; t1 class description)"))
    long_clip_pca_dim: int = field(default=LONG_CLIP_PCA_DIM, metadata=arg_help(
        "--loss long_clip: principal components of the batch's image features kept for the short caption"))
    max_seq_length: Optional[int] = field(default=None, metadata=arg_help(
        "token budget of every text (training captions, validation prompts); default: the model's text positions "
        "(text_config.max_position_embeddings). Truncation is counted per level and reported"))
    stretch_positions: Optional[int] = field(default=None, metadata=arg_help(
        "stretch the text position table to N positions before training (Long-CLIP's knowledge-preserving rule: "
        f"the first {KEEP_POSITIONS} kept and held fixed while training, the rest interpolated; e.g. 248 for a "
        "77-position CLIP); the model is saved as a plain N-position CLIP"))
    truncation_warning_share: float = field(default=TRUNCATION_WARNING_SHARE, metadata=arg_help(
        "warn (loudly, not an error) when more than this share of a text level's captions is truncated"))
    model_family: Optional[str] = field(default=None, metadata=arg_help(
        "declare the family of --model_name_or_path's weights (e.g. Long-CLIP for a transformers-format Long-CLIP "
        "checkpoint); recorded in the saved config's sdx_lineage (convert-clip records it by itself). The report "
        "puts the paper's Long-CLIP rows beside Long-CLIP-derived runs only"))
    metric_for_best_model: Literal[EVAL_METRICS] = field(default="own_accuracy", metadata=arg_help(
        "validation zero-shot metric that picks the kept epoch: own_accuracy / own_macc use the training level's "
        "own class prompts (T0 template, T1 description; T2-T4: each class's re-normalised mean of its training "
        "captions at that level, as the benchmark; mixed: the mean over T0-T4); tK_accuracy / tK_macc name a "
        "level; mixed_* the mean over T0-T4"))

    def __post_init__(self) -> None:
        if self.method != "full" and (self.freeze_vision_model or self.freeze_text_model):
            raise ValueError("--freeze_vision_model / --freeze_text_model apply to --method full only")
        if not self.merge_lora and self.method != "lora":
            raise ValueError("--no_merge_lora applies to --method lora only")
        if self.freeze_vision_model and self.freeze_text_model:
            raise ValueError("--freeze_vision_model and --freeze_text_model together leave nothing to train")
        check_ranges(self, dict.fromkeys(("lora_r", "adapter_reduction", "tokenizer_vocab_size", "image_size"), ">= 1"))
        if not 0.0 <= self.adapter_alpha <= 1.0:
            raise ValueError("--adapter_alpha must lie in [0, 1]")
        if self.long_clip_pca_dim < 1:
            raise ValueError("--long_clip_pca_dim must be >= 1")
        if self.max_seq_length is not None and self.max_seq_length < 3:
            raise ValueError("--max_seq_length must be >= 3 (start token, one token, end token)")
        if self.stretch_positions is not None and self.stretch_positions <= KEEP_POSITIONS + 1:
            raise ValueError(f"--stretch_positions must exceed {KEEP_POSITIONS + 1}")
        if not 0.0 <= self.truncation_warning_share <= 1.0:
            raise ValueError("--truncation_warning_share must lie in [0, 1]")


ClipTrainingArguments = with_defaults(TrainingArguments, "ClipTrainingArguments", learning_rate=1e-4)


def parse_clip_args(argv: Optional[Sequence[str]] = None) -> JobArguments:
    """train_clip.py's arguments: defaults < --recipe < --config < command line (sdx.train.args)."""
    data, model, training = parse_job_args((ClipDataArguments, ClipModelArguments, ClipTrainingArguments), argv,
                                           prog="train_clip.py", description=DESCRIPTION, recipes=RECIPES)
    if model.loss == "long_clip" and data.caption_level in ("t0", "t1"):
        raise SystemExit(f"train_clip.py: error: --loss long_clip pairs a long caption with a short one: use "
                         f"--caption_level t2, t3, t4 or mixed (got {data.caption_level})")
    return JobArguments(data=data, model=model, training=training)


# ----------------------------------------------------------------------------------------------------------------
# texts
# ----------------------------------------------------------------------------------------------------------------
def level_texts(row: Mapping[str, Any]) -> dict[str, str]:
    """T0..T4 of one dataset row with the dataset's fallback chain applied (T3 rendered as text)."""
    texts = T.row_level_texts(row)
    return {level: T.resolve_caption(texts, level)[0] for level in T.LEVELS}


TEXT_COLUMNS = ("class_name", "t0", "t1", "t2", "t3", "t4")


def split_level_texts(hf_split, level: str) -> list[str]:
    """Each row's text at `level` (t0..t4) with the dataset's fallback chain (`level_texts`)."""
    cols = [c for c in TEXT_COLUMNS if c in hf_split.column_names]
    return [level_texts(r)[level] for r in hf_split.select_columns(cols)]


def caption_level_usage(split, level: str) -> Counter:
    """(requested level, level used) -> number of training captions of `split` for a run at `level`, by the
    dataset's fallback chain; with 'mixed' every (row, level) pair counts once (the expectation of the per-epoch
    draw). A row whose whole chain is empty counts as used level "none"."""
    cols = [c for c in ("class_name", "t1", "t2", "t3", "t4") if c in split.column_names]
    usage: Counter = Counter()
    for row in split.select_columns(cols):
        texts = T.row_level_texts(row)
        for requested in (T.LEVELS if level == "mixed" else (level,)):
            caption, used = T.resolve_caption(texts, requested)
            usage[requested, used if caption else "none"] += 1
    return usage


def caption_shares(usage: Counter) -> dict[str, float]:
    """{level used: share of the training captions}, largest first (RunMetadata.caption_levels_used)."""
    used: Counter = Counter()
    for (_, lv), n in usage.items():
        used[lv] += n
    total = sum(used.values()) or 1
    return {lv: round(n / total, 4) for lv, n in used.most_common()}


def check_caption_levels(usage: Counter, level: str, allow_fallback: bool, data_dir: str) -> None:
    """Warn (with the counts) when training captions fall back to another level; stop when none of the records
    has the requested level, unless `allow_fallback`."""
    requested, used = Counter(), Counter()
    for (req, lv), n in usage.items():
        requested[req] += n
        used[lv] += n
    missing = {req: sum(n for (r, lv), n in usage.items() if r == req and lv != req) for req in requested}
    missing = {req: n for req, n in missing.items() if n}
    if not missing:
        return
    total = sum(used.values())
    used_text = ", ".join(f"{lv.upper()} {n} ({100 * n / total:.1f} %)" for lv, n in used.most_common())
    lacking = "; ".join(f"{req.upper()} missing in {n} of {requested[req]} records" for req, n in missing.items())
    message = (f"--caption_level {level} on {data_dir}: {lacking}; the training captions are {used_text}. "
               "The model card, all_results.json and sdx_run.json record these shares (caption_levels_used).")
    if level != "mixed" and missing.get(level) == requested[level]:
        message = (f"--caption_level {level} on {data_dir}: none of the {requested[level]} training records has a "
                   f"{level.upper()} text, so every caption would be a fallback ({used_text})")
        if not allow_fallback:
            raise ValueError(message + ". Choose a level the data has (`steeldefectx stats --data_dir "
                             f"{data_dir}` counts them per class) or pass --allow_caption_fallback to train on the "
                             "fallbacks.")
        message += "; trained anyway (--allow_caption_fallback)."
    logger.warning("CAPTION FALLBACK: %s", message)


def class_prompts(ds) -> tuple[list[int], list[str], list[str]]:
    """Candidate class ids (`sdx.data.builder.candidate_classes`), their T0 prompts and T1 texts."""
    from sdx.data.builder import candidate_classes, class_descriptions, class_names  # heavy (datasets): a run only

    names, ids, t1 = class_names(ds), candidate_classes(ds), class_descriptions(ds)
    return ids, [T.t0_prompt(names[i]) for i in ids], [t1.get(i) or T.t0_prompt(names[i]) for i in ids]


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
class EpochShuffleSampler(torch.utils.data.Sampler):
    """Seeded shuffle, re-drawn per epoch from (seed, epoch); `set_epoch` also tells the dataset the epoch (for
    the mixed-level draw). Not a RandomSampler subclass, so accelerate keeps it as it is."""

    def __init__(self, dataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        return iter(torch.randperm(n, generator=g).tolist())


class CaptionDataset(torch.utils.data.Dataset):
    """(image, caption, label) rows; with level 'mixed' the caption level is drawn per example per epoch. With a
    ``short_level`` (--loss long_clip) each row also carries its text at that level as ``short_caption``."""

    def __init__(self, hf_split, caption_level: str, seed: int, pixels: Optional[torch.Tensor] = None,
                 short_level: Optional[str] = None):
        self.ds = hf_split.select_columns(["image"])       # rows decode the image only (no mask)
        self.pixels = pixels                                # pre-processed pixel values (see pixel_cache)
        self.level, self.seed, self.epoch = caption_level, int(seed), 0
        self.short = split_level_texts(hf_split, short_level) if short_level else None
        if caption_level == "mixed":
            cols = [c for c in TEXT_COLUMNS if c in hf_split.column_names]
            texts = [level_texts(r) for r in hf_split.select_columns(cols)]
            self.texts = [[t[lv] for lv in T.LEVELS] for t in texts]
            self._levels = self._draw(0)
        else:
            self.captions = list(hf_split["caption"])
        self.labels = [int(x) for x in hf_split["label"]]

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch)])
        return rng.integers(0, len(T.LEVELS), size=len(self.ds))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch and self.level == "mixed":
            self._levels = self._draw(epoch)
        self.epoch = int(epoch)

    def caption(self, i: int) -> str:
        if self.level == "mixed":
            return self.texts[i][int(self._levels[i])]
        return self.captions[i]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = _image_item(self.ds, self.pixels, int(i))
        row.update(caption=self.caption(int(i)), label=self.labels[int(i)])
        if self.short is not None:
            row["short_caption"] = self.short[int(i)]
        return row


def _image_item(ds, pixels: Optional[torch.Tensor], i: int) -> dict[str, Any]:
    return {"pixel_values": pixels[i]} if pixels is not None else {"image": ds[i]["image"]}


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, hf_split, pixels: Optional[torch.Tensor] = None):
        self.ds = hf_split.select_columns(["image"])
        self.pixels = pixels
        self.labels = [int(x) for x in hf_split["label"]]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(_image_item(self.ds, self.pixels, int(i)), label=self.labels[int(i)])


class ClipCollator:
    """PIL images -> pixel_values (RGB, the processor's resize/crop/normalise) unless the rows carry cached
    pixel values; captions -> input_ids/mask (padding, truncation at the tokenizer's budget), short captions
    (--loss long_clip) -> short_input_ids/short_attention_mask."""

    def __init__(self, processor, with_text: bool = True):
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.with_text = with_text

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "pixel_values" in rows[0]:
            pixel_values = torch.stack([r["pixel_values"] for r in rows])
        else:
            images = [r["image"].convert("RGB") for r in rows]
            pixel_values = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        batch = {"pixel_values": pixel_values, "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long)}
        if self.with_text:
            enc = self.tokenizer([r["caption"] for r in rows], padding=True, truncation=True, return_tensors="pt")
            batch["input_ids"], batch["attention_mask"] = enc["input_ids"], enc["attention_mask"]
            if "short_caption" in rows[0]:
                enc = self.tokenizer([r["short_caption"] for r in rows], padding=True, truncation=True,
                                     return_tensors="pt")
                batch["short_input_ids"], batch["short_attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return batch


# ----------------------------------------------------------------------------------------------------------------
# the trained module
# ----------------------------------------------------------------------------------------------------------------
class ClipTrainModule(nn.Module):
    """What the loop trains: forward(batch) -> scalar loss. Holds the CLIP (plain, peft-wrapped or with adapter).

    ``forward(..., embed="image" | "text")`` returns normalised embeddings instead (the validation's encoders), so
    every use of the model goes through the prepared module's forward, as FSDP and DeepSpeed require.
    For the adapter with class-level captions, ``class_input_ids`` / ``class_attention_mask`` (C rows, one per
    class id) are kept as buffers and embedded with the frozen text tower."""

    def __init__(self, clip: nn.Module, method: str, loss: str, class_text_inputs: Optional[dict] = None,
                 pca_dim: int = LONG_CLIP_PCA_DIM):
        super().__init__()
        self.clip, self.method, self.loss_kind, self.pca_dim = clip, method, loss, int(pca_dim)
        self.class_text_loss = class_text_inputs is not None
        if self.class_text_loss:
            self.register_buffer("class_input_ids", class_text_inputs["input_ids"], persistent=False)
            self.register_buffer("class_attention_mask", class_text_inputs["attention_mask"], persistent=False)

    def forward(self, pixel_values=None, labels=None, input_ids=None, attention_mask=None, short_input_ids=None,
                short_attention_mask=None, embed: Optional[str] = None) -> torch.Tensor:
        if embed == "image":
            return encode_images(self.clip, pixel_values)
        if embed == "text":
            return encode_texts(self.clip, input_ids, attention_mask)
        img = image_features(self.clip, pixel_values)
        logit_scale = get_logit_scale(self.clip)
        if self.class_text_loss:
            with torch.no_grad():
                cls = text_features(self.clip, self.class_input_ids, self.class_attention_mask)
            return class_text_loss(img, cls, labels, logit_scale)
        txt = self._text(input_ids, attention_mask)
        if self.loss_kind == "long_clip":
            short = self._text(short_input_ids, short_attention_mask)
            return long_clip_loss(img, txt, short, logit_scale, labels=labels, pca_dim=self.pca_dim)
        return contrastive_loss(img, txt, logit_scale, labels=labels, kind=self.loss_kind)

    def _text(self, input_ids, attention_mask) -> torch.Tensor:
        if self.method == "adapter":                     # the adapter's CLIP is frozen
            with torch.no_grad():
                return text_features(self.clip, input_ids, attention_mask)
        return text_features(self.clip, input_ids, attention_mask)


def _freeze(module: Optional[nn.Module]) -> None:
    if module is not None:
        for prm in module.parameters():
            prm.requires_grad_(False)


def build_clip(m: ClipModelArguments, seed: int, train_split, all_ds) -> tuple[nn.Module, Any, str]:
    """(clip model, processor, origin): loaded or from scratch, its family recorded (--model_family) and its
    text positions stretched (--stretch_positions), before method wrapping."""
    if m.model_name_or_path:
        model, processor = load_clip(m.model_name_or_path)
        convert_to_rgb(processor.image_processor, model.config)
        origin = weights_origin(m.model_name_or_path)
    else:
        texts: list[str] = []
        cols = [c for c in TEXT_COLUMNS if c in train_split.column_names]
        for row in train_split.select_columns(cols):
            texts.extend(level_texts(row).values())
        _, t0s, t1s = class_prompts(all_ds)
        texts += t0s + t1s
        model, processor = build_clip_from_scratch(m.model_size, texts, vocab_size=m.tokenizer_vocab_size,
                                                   image_size=m.image_size, seed=seed,
                                                   vision_overrides=m.vision_config_overrides)
        origin = weights_origin(None)
    if m.model_family:
        update_lineage(model, family=m.model_family)
    if m.stretch_positions:
        stretch_text_positions(getattr(model, "clip", model), m.stretch_positions)
    return model, processor, origin


def hold_leading_positions(clip: nn.Module) -> bool:
    """After --stretch_positions: keep the first KEEP_POSITIONS rows fixed (`keep_position_rows`) when the text
    position table trains at all (method full without a frozen text tower). Returns whether it does."""
    table = clip.text_model.embeddings.position_embedding
    if not table.weight.requires_grad:
        return False
    keep_position_rows(clip)
    return True


def count_training_texts(counter: TruncationCounter, split, level: str, prompts: Mapping[str, Any],
                         short_level: Optional[str]) -> TruncationCounter:
    """Count against the token budget every text the run encodes: the training captions of each level, the
    validation class prompts and (--loss long_clip) the short captions."""
    for lv in (T.LEVELS if level == "mixed" else (level,)):
        counter.add(f"{lv} captions (train)", split_level_texts(split, lv) if level == "mixed" else split["caption"])
    for name, texts in prompts.items():
        if isinstance(texts, CaptionMeans):   # T2-T4 class embeddings: means of these training captions
            counter.add(f"{name} caption means (validation)", [t for t in texts.texts if t])
        else:
            counter.add(f"{name} prompts (validation)", texts)
    if short_level:
        counter.add(f"{short_level} short captions (long_clip)", split_level_texts(split, short_level))
    return counter


def wrap_method(m: ClipModelArguments, level: str, clip: nn.Module, processor, names: Sequence[str],
                t1_by_id: Mapping[int, str]) -> ClipTrainModule:
    """The trained module for --method (freezing, LoRA or adapter). `names`: every class name (label order);
    `t1_by_id`: class id -> T1 text (classes with images)."""
    if m.method == "full":
        if m.freeze_vision_model:
            _freeze(getattr(clip, "vision_model", None))
            _freeze(getattr(clip, "visual_projection", None))
        if m.freeze_text_model:
            _freeze(getattr(clip, "text_model", None))
            _freeze(getattr(clip, "text_projection", None))
        return ClipTrainModule(clip, "full", m.loss, pca_dim=m.long_clip_pca_dim)
    if m.method == "lora":
        peft_model = apply_clip_lora(clip, towers=m.lora_towers, r=m.lora_r, alpha=m.lora_alpha,
                                     dropout=m.lora_dropout)
        return ClipTrainModule(peft_model, "lora", m.loss, pca_dim=m.long_clip_pca_dim)
    adapter = ClipAdapter(clip_embed_dim(clip), reduction=m.adapter_reduction, alpha=m.adapter_alpha)
    model = ClipWithAdapter(clip, adapter)
    class_inputs = None
    if level in ("t0", "t1"):
        # row c = class id c (classes without images get their T0 prompt; they never appear as labels)
        texts = [T.t0_prompt(n) if level == "t0" else t1_by_id.get(i, T.t0_prompt(n))
                 for i, n in enumerate(names)]
        enc = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        class_inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return ClipTrainModule(model, "adapter", m.loss, class_text_inputs=class_inputs, pca_dim=m.long_clip_pca_dim)


# ----------------------------------------------------------------------------------------------------------------
# zero-shot evaluation
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class CaptionMeans:
    """The class prompts of a T2-T4 level: each class's embedding is the re-normalised mean of its training
    captions (`texts`, one per training row, "" where a row lacks the level; `labels`: the rows' class ids), a
    class without any takes its T1 row (sdx.models.prompts.caption_mean_embeddings, the benchmark's rule)."""

    texts: list[str]
    labels: list[int]

    def distinct(self) -> list[str]:
        """The distinct non-empty captions, in the order caption_mean_embeddings encodes them."""
        return distinct_captions(self.texts)[1]

    def embed(self, emb: torch.Tensor, class_ids: Sequence[int], t1: torch.Tensor) -> torch.Tensor:
        """[len(class_ids), D] class embeddings from `emb`, the embeddings of `distinct()` with the current weights
        (`t1`: the T1 rows of `class_ids`)."""
        ids = list(class_ids)
        n = max(max(self.labels, default=0), max(ids)) + 1
        fallback = np.zeros((n, t1.shape[1]), dtype=np.float32)
        fallback[ids] = t1.float().cpu().numpy()
        pos = {t: i for i, t in enumerate(self.distinct())}
        emb_np = emb.float().cpu().numpy()
        table, _ = caption_mean_embeddings(self.texts, self.labels, n,
                                           lambda texts: emb_np[[pos[t] for t in texts]], fallback)
        return torch.from_numpy(table[ids]).to(t1.device)


def prompt_inputs(clip: nn.Module, tokenizer, prompts: Mapping[str, Any]) -> dict[str, dict]:
    """Each prompt set tokenized once (padding, truncation at the model's text limit), for `zero_shot_eval`; a
    CaptionMeans set as its distinct captions, kept beside them under "means"."""
    limit = text_max_length(clip, tokenizer)

    def tokenize(texts: Sequence[str]) -> dict:
        return dict(tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"))

    return {name: ({"means": texts, **tokenize(texts.distinct())} if isinstance(texts, CaptionMeans)
                   else tokenize(texts)) for name, texts in prompts.items()}


@torch.no_grad()
def zero_shot_eval(accelerator, model: nn.Module, loader, class_ids: Sequence[int],
                   prompts: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Zero-shot accuracy / mAcc (percent) of `loader`'s images against each tokenized prompt set (name -> C
    texts, `prompt_inputs`; a CaptionMeans set needs a "t1" set), and num_samples (images evaluated, each once
    across processes: gather_for_metrics drops the padding). `model` is the prepared ClipTrainModule, called
    through its forward only."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    class_ids_t = torch.tensor(list(class_ids), device=device)
    with accelerator.autocast():                          # the training precision (bf16/fp16 or none)
        enc_text = {name: model(input_ids=enc["input_ids"].to(device),
                                attention_mask=enc["attention_mask"].to(device), embed="text")
                    for name, enc in prompts.items()}
    text_embs = {name: e for name, e in enc_text.items() if "means" not in prompts[name]}
    text_embs.update({name: prompts[name]["means"].embed(e, class_ids, text_embs["t1"])
                      for name, e in enc_text.items() if "means" in prompts[name]})
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in prompts}
    labels: list[torch.Tensor] = []
    for batch in loader:
        with accelerator.autocast():
            img = model(pixel_values=batch["pixel_values"].to(device), embed="image")
        for name, emb in text_embs.items():
            pred = zero_shot_predict(img, emb, class_ids_t)
            preds[name].append(accelerator.gather_for_metrics(pred))
        labels.append(accelerator.gather_for_metrics(batch["labels"].to(device)))
    if was_training:
        model.train()
    y = torch.cat(labels).cpu().numpy()
    out: dict[str, float] = {}
    out["num_samples"] = int(len(y))
    for name in prompts:
        p = torch.cat(preds[name]).cpu().numpy()
        out[f"{name}_accuracy"] = accuracy(y, p)
        out[f"{name}_macc"] = mean_class_accuracy(y, p)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------------------------------
class ClipJob(Job):
    """train_clip.py's hooks of the shared skeleton (sdx.train.job.run_job)."""

    kind = "clip"

    def __init__(self, args: JobArguments):
        super().__init__(args)
        self.pixels = PixelBudget(args.data.pixel_cache_mb)

    @property
    def method(self) -> str:
        return self.args.model.method

    @property
    def select_metric(self) -> str:
        """--metric_for_best_model with "own" replaced by the training level (t0..t4 or mixed)."""
        metric = self.args.model.metric_for_best_model
        return f"{self.args.data.caption_level}_{metric[4:]}" if metric.startswith("own_") else metric

    @property
    def select_rule(self) -> str:
        level, measure = self.select_metric.rsplit("_", 1)
        what = {"accuracy": "zero-shot accuracy", "macc": "zero-shot mean class accuracy"}[measure]
        own = " (the training level's own prompts)" if self.args.model.metric_for_best_model.startswith("own_") else ""
        if level == "mixed":
            levels = [lv for lv in T.LEVELS if lv in self.prompts]
            return (f"validation {what}, mean over the levels {', '.join(lv.upper() for lv in levels)}{own}, each "
                    "with its class embeddings: " + "; ".join(self.prompt_sources[lv] for lv in levels))
        return f"validation {what} with {level.upper()} class embeddings{own}: {self.prompt_sources[level]}"

    def load_data(self):
        from sdx.data.source import load_rows  # heavy (datasets, ~1 s): a run only, not --help

        d = self.args.data
        return load_rows(d.data_dir, d, d.dataset_config_name, caption_level=d.caption_level,
                         validation_fraction=d.validation_fraction, shots=d.shots, seed=self.args.training.seed,
                         classes=d.classes, exclude_classes=d.exclude_classes, on_error=d.on_error,
                         annotate_missing=d.annotate_missing, cache_dir=d.cache_dir, require_captions=True)

    def build_model(self, ds, splits):
        from sdx.data.builder import class_names  # heavy (datasets): a run only

        d, m, seed = self.args.data, self.args.model, self.args.training.seed
        self.caption_usage = caption_level_usage(splits["train"], d.caption_level)
        check_caption_levels(self.caption_usage, d.caption_level, d.allow_caption_fallback, str(d.data_dir))
        self.class_ids, t0_prompts, t1_prompts = class_prompts(ds)
        self.prompts = {"t0": t0_prompts, "t1": t1_prompts, **self.caption_prompts(splits["train"])}
        self.names = class_names(ds)
        clip, self.processor, self.origin = build_clip(m, seed, splits["train"], ds)
        self.lineage = model_lineage(clip)
        self.max_seq_length = set_text_max_length(self.processor.tokenizer, clip, m.max_seq_length)
        self.text_budget = self.report_text_budget(clip, splits["train"])
        self.prompt_inputs = prompt_inputs(clip, self.processor.tokenizer, self.prompts)  # after the budget is set
        module = wrap_method(m, self.args.data.caption_level, clip, self.processor, self.names,
                             dict(zip(self.class_ids, t1_prompts)))
        self.held_positions = bool(m.stretch_positions) and hold_leading_positions(getattr(clip, "clip", clip))
        return module

    @property
    def short_level(self) -> Optional[str]:
        return self.args.model.long_clip_short_level if self.args.model.loss == "long_clip" else None

    def report_text_budget(self, clip, train_split) -> dict[str, Any]:
        """Count, print and (above --truncation_warning_share) warn about truncated texts; returns the summary."""
        from accelerate import PartialState  # the process state make_accelerator set up

        counter = TruncationCounter(self.processor.tokenizer, self.max_seq_length, text_positions(clip),
                                    self.args.model.truncation_warning_share)
        count_training_texts(counter, train_split, self.args.data.caption_level, self.prompts, self.short_level)
        summary = counter.summary()
        if PartialState().is_main_process:
            print("\n".join(format_truncation(summary)), flush=True)
            for message in truncation_warnings(summary):
                logger.warning(message)
        return summary

    def caption_prompts(self, train) -> dict[str, CaptionMeans]:
        """The T2-T4 prompt sets validation needs (the training level's, the selection metric's; all for mixed)."""
        from sdx.data.builder import caption_texts  # heavy (datasets): a run only

        own, chosen = self.args.data.caption_level, self.select_metric.rsplit("_", 1)[0]
        needed = T.LEVELS[2:] if "mixed" in (own, chosen) else sorted({own, chosen} - {"t0", "t1"})
        labels, out = [int(x) for x in train["label"]], {}
        self.prompt_sources = dict(CLASS_PROMPT_SOURCES)
        for level in needed:
            texts = caption_texts(train, level)
            source = f"each class's re-normalised mean of its training {level.upper()} captions (T1 without any)"
            if not any(t.strip() for t in texts):
                if level == chosen and level != own:
                    raise ValueError(f"--metric_for_best_model {self.args.model.metric_for_best_model}: no training "
                                     f"record has a {level.upper()} text to build its class embeddings from")
                if level != own:   # mixed: a level the data lacks is left out of the mean
                    continue
                texts = list(train["caption"])
                source = (f"each class's re-normalised mean of the captions it was trained on (no training record "
                          f"has {level.upper()}; these are its fallbacks)")
            out[level] = CaptionMeans(texts, labels)
            self.prompt_sources[level] = source
        return out

    def train_loader(self, split):
        d, t = self.args.data, self.args.training
        pixels = self.pixels.cache(split, self.processor.image_processor, "train images")
        train_set = CaptionDataset(split, d.caption_level, t.seed, pixels, short_level=self.short_level)
        return torch.utils.data.DataLoader(
            train_set, batch_size=t.per_device_train_batch_size, sampler=EpochShuffleSampler(train_set, t.seed),
            collate_fn=ClipCollator(self.processor), num_workers=t.dataloader_num_workers, drop_last=False)

    def eval_loader(self, split, name):
        t = self.args.training
        pixels = self.pixels.cache(split, self.processor.image_processor, "validation images") \
            if name == "validation" else None
        return torch.utils.data.DataLoader(
            ImageDataset(split, pixels), batch_size=t.per_device_eval_batch_size, shuffle=False,
            collate_fn=ClipCollator(self.processor, with_text=False), num_workers=t.dataloader_num_workers)

    def compute_loss(self, model, batch):
        return model(**batch)

    @property
    def caption_level(self) -> str:
        return self.args.data.caption_level

    def evaluate(self, accelerator, model, loader):
        out = zero_shot_eval(accelerator, model, loader, self.class_ids, self.prompt_inputs)
        if "mixed" in (self.args.data.caption_level, self.select_metric.rsplit("_", 1)[0]):
            for measure in ("accuracy", "macc"):
                out[f"mixed_{measure}"] = float(np.mean([out[f"{lv}_{measure}"] for lv in T.LEVELS
                                                         if f"{lv}_{measure}" in out]))
        return out

    def final_metrics(self, accelerator, result, model, loaders):
        """Zero-shot metrics of the kept weights (`model`, prepared) on validation and test."""
        return {f"{name}_{k}": v for name, loader in loaders.items()
                for k, v in self.evaluate(accelerator, model, loader).items()}

    def training_summary(self, result):
        summary = result.summary()
        history = summary.pop("history")
        return {**{k if k.startswith("train") else f"train_{k}": v for k, v in summary.items()},
                "history": history, "caption_level": self.args.data.caption_level, "loss": self.args.model.loss,
                "caption_levels_used": caption_shares(self.caption_usage),
                "caption_level_counts": {f"{req}->{used}": n for (req, used), n in sorted(self.caption_usage.items())},
                "candidate_classes": [self.names[i] for i in self.class_ids], "text_budget": self.text_budget,
                "lineage": self.lineage}

    def save(self, model, out, results):
        """The adapter alone for --method adapter and unmerged LoRA (the base named, see docs/training.md), the
        full model otherwise; the processor always."""
        m, clip = self.args.model, model.clip
        if self.held_positions:
            release_position_rows(clip)                        # a plain position table for every reader
        budget = self.processor.tokenizer.model_max_length
        self.processor.tokenizer.model_max_length = text_positions(clip)   # readers get every position
        if self.method == "adapter":
            clip.save_pretrained(out, base_model_name_or_path=named_base(m), processor=self.processor)
        elif self.method == "lora":
            model.clip = save_lora(clip, out, named_base(m), self.processor, merge=m.merge_lora)
        else:
            clip.save_pretrained(str(out))
        self.processor.save_pretrained(str(out))
        self.processor.tokenizer.model_max_length = budget     # a save while training (--hub_strategy) keeps it

    def metadata_fields(self):
        m = self.args.model
        return {"caption_level": self.args.data.caption_level, "loss": m.loss,
                "caption_levels_used": caption_shares(self.caption_usage),
                "details": {"lora_towers": m.lora_towers if m.method == "lora" else None, "frozen": self.frozen,
                            "max_seq_length": self.max_seq_length, "lineage": self.lineage,
                            "held_positions": KEEP_POSITIONS if self.held_positions else 0, "saved": saved_form(m)}}

    @property
    def frozen(self) -> list[str]:
        m = self.args.model
        return [t for t, f in (("vision", m.freeze_vision_model), ("text", m.freeze_text_model)) if f]

    def model_card(self, results):
        card = clip_model_card(self.args, results, self.frozen)
        card["extra_sections"]["Text length"] = text_budget_section(self.text_budget, self.lineage)
        return card


def save_lora(peft_model, out, base: Optional[str], processor, merge: bool):
    """Save a LoRA run; returns the model to keep. Merged: the merged CLIPModel in ``out`` and the LoRA weights
    alone in ``out/lora`` (peft's format, written only when the base has a name: a random-init base exists nowhere
    else). Unmerged: peft's format in ``out`` only, ``base_model_name_or_path`` set (`base_reference`: a
    random-init base saved once in ``out/BASE_SUBFOLDER``)."""
    config = peft_model.peft_config["default"]
    if merge:
        if base:
            config.base_model_name_or_path = base_reference(out, base)
            peft_model.save_pretrained(str(out / "lora"), save_embedding_layers=False)
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(str(out))
        return merged
    config.base_model_name_or_path = base_reference(out, base) if base else BASE_SUBFOLDER
    # LoRA targets attention projections only; False also skips peft's look-up of the base's config on the Hub
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    if not base:
        base_reference(out, None, peft_model.unload(), processor)  # the frozen random-init base, LoRA removed
    return peft_model


def named_base(m: ClipModelArguments) -> Optional[str]:
    """The base an adapter folder names: --model_name_or_path as loaded; None (the base saved beside the adapter)
    for a random-init base or one changed here (--stretch_positions, --model_family), which exist nowhere else."""
    changed = m.stretch_positions or m.model_family
    return None if changed else m.model_name_or_path


def saved_form(m: ClipModelArguments) -> str:
    if m.method == "adapter" or (m.method == "lora" and not m.merge_lora):
        return "adapter only"
    return "merged" if m.method == "lora" else "full model"


def loading_section(m: ClipModelArguments, folder: str) -> str | None:
    """The model card's "How to load" text for a folder that holds an adapter only (None otherwise)."""
    if saved_form(m) != "adapter only":
        return None
    named, folder = named_base(m), Path(folder).resolve().name   # no local path in a card: folder names only
    if named and Path(named).is_dir():
        base = f"`{Path(named).resolve().name}` (a local folder, its path in the adapter's config)"
    else:
        base = (f"`{named}`" if named else
                f"the {'changed' if m.model_name_or_path else 'random-init'} CLIP saved once in `{BASE_SUBFOLDER}/`")
    if m.method == "adapter":
        held = (f"a CLIP-Adapter only (`{CLIP_ADAPTER_WEIGHTS}`, `{CLIP_ADAPTER_CONFIG}`: ratio "
                f"{m.adapter_alpha}, reduction {m.adapter_reduction})")
        other = ""
    else:
        held = "LoRA weights only, in peft's format (`adapter_config.json`, `adapter_model.safetensors`)"
        base_path = f"{folder}/{BASE_SUBFOLDER}" if not named else base.split("`")[1]
        other = (f" With peft alone: `PeftModel.from_pretrained(CLIPModel.from_pretrained(\"{base_path}\"), "
                 f"\"{folder}\")`.")
    return (f"This folder holds {held} and the processor; its base model is {base}. It is **not** a full "
            "transformers model: `CLIPModel.from_pretrained` and `pipeline(...)` refuse it (no `config.json`), "
            "they never silently run the base without the adapter. Load base + adapter with the SteelDefectX "
            f"package:\n\n```python\nfrom sdx.models.clip import load_clip\n\nmodel, processor = "
            f"load_clip(\"{folder}\")  # a local folder (download a Hub repo first)\n```\n\n"
            f"`eval_benchmark.py --model_name_or_path {folder}` evaluates it." + other)


def clip_model_card(args: JobArguments, results: Mapping[str, Any], frozen: Sequence[str]) -> dict[str, Any]:
    """The CLIP-specific `write_model_card` arguments: caption level, method, initial weights, synthetic data."""
    d, m, t = args.data, args.model, args.training
    data = describe_data(d.data_dir, d.dataset_name)
    level, synthetic = d.caption_level, data["synthetic"]
    method_text = {
        "full": "full contrastive fine-tuning" + (f" (frozen: {', '.join(frozen)})" if frozen else ""),
        "lora": f"LoRA (r={m.lora_r}, alpha={m.lora_alpha}) on the {m.lora_towers} tower(s)",
        "adapter": f"CLIP-Adapter (alpha={m.adapter_alpha}, reduction={m.adapter_reduction}) on a frozen CLIP",
    }[m.method]
    init_text = (f"`{results['init']}`" if m.model_name_or_path else
                 f"random initialisation (preset `{m.model_size}`"
                 + (f", vision tower `{m.vision_config_overrides}`" if m.vision_config_overrides else "")
                 + ", tokenizer trained on the training captions)")
    chosen = (f"the best epoch by {results['select_rule']}" if t.eval_strategy == "epoch"
              else "the last epoch (--eval_strategy no)")
    used = results["caption_levels_used"]
    used_text = ", ".join(f"{lv.upper()} {100 * share:.1f} %" for lv, share in used.items())
    fell_back = level != "mixed" and set(used) != {level}
    section = (f"- caption level {'requested' if fell_back else 'used for training'}: **{level.upper()}**"
               + (" (one of T0-T4 drawn per example per epoch)" if level == "mixed" else "")
               + (f"\n- **captions actually used: {used_text}** (records without {level.upper()} fell back)"
                  if fell_back else f"\n- captions used: {used_text}")
               + f"\n- method: **{method_text}**\n- loss: {m.loss}\n- initial weights: {init_text}\n"
               f"- kept weights: {chosen}, on a stratified carve-out of train"
               + ("\n- **data: the embedded SYNTHETIC demo set, not steel photographs; these numbers say nothing "
                  "about SteelDefectX**" if synthetic else ""))
    flat = args.flat()
    sections = {"Caption level, method, initial weights": section}
    loading = loading_section(m, str(t.output_dir))
    if loading:
        sections["How to load"] = loading
    library = {"full model": "transformers", "merged": "transformers"}.get(saved_form(m),
                                                                          "peft" if m.method == "lora" else "")
    return dict(task="zero-shot-image-classification", tags=["clip", "contrastive", f"caption-{level}", m.method],
                library_name=library,
                dataset={**data, "config": d.dataset_config_name or T.LEVEL_CONFIGS.get(level, "mixed"),
                         "caption_level": level, "caption_levels_used": used_text, "splits": results["splits"]},
                metrics={k: v for k, v in results.items()
                         if k.startswith(("validation_", "test_")) and not k.endswith("num_samples")},
                hyperparameters={k: flat[k] for k in CARD_HYPERPARAMETERS},
                extra_sections=sections)


CARD_HYPERPARAMETERS = ("method", "caption_level", "loss", "recipe", "learning_rate", "optimizer", "num_train_epochs",
                        "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type",
                        "eval_strategy", "seed", "max_seq_length", "stretch_positions")


def run_clip_training(args: JobArguments, step_callback: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Train as `args` says and return the results written to all_results.json."""
    return run_job(ClipJob(args), step_callback)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """train_clip.py: parse the arguments and train."""
    return run_clip_training(parse_clip_args(argv))
