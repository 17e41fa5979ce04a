"""CLIP training on SteelDefectX captions (train_clip.py's job), run by the shared loop of sdx.train.loop.

What it does
------------
1. Data: ``sdx.data.builder.load_steeldefectx(--data_dir, caption_level=...)`` (train / validation / test). The training
   text of an image is its ``caption`` for a fixed level (the dataset's documented fallback for missing fine text
   applies: T2 empty -> T4 -> T1; T3 missing -> T1; T4 missing -> T4 rendered from T3 -> T1). ``--caption_level
   mixed`` draws one of T0..T4 per example per epoch (every time the example is seen), uniformly, from a generator
   seeded with (seed, epoch), the same fallback applied to the drawn level; the draw depends only on
   (seed, epoch, example index), so it is the same for any number of processes and after a resume.
   T3 is rendered with ``sdx.data.levels.render_t3``. Images are converted to RGB (the release mixes grayscale and RGB)
   and preprocessed by the model's processor; texts are tokenised with padding and truncation at the model's
   ``max_position_embeddings``. There is no random augmentation, so the train and validation images are
   pre-processed once and kept in memory when they fit in ``--pixel_cache_mb`` (default 1024 MB; e.g. 12 KB per
   image at 32 px, 600 KB at 224 px), otherwise per batch; the pixel values are the same either way.
2. Model: ``--model_name_or_path`` (Hub id or local dir, via ``sdx.models.load_clip``) or, without it, a random
   ``--model_size`` preset with a BPE tokenizer trained on the training texts of every level plus the class texts.
3. Methods:
   * ``full``: contrastive fine-tuning of both towers and the temperature; ``--freeze_vision_model`` freezes the
     vision tower and its projection, ``--freeze_text_model`` the text tower and its projection.
   * ``lora``: peft LoRA (``--lora_r``, ``--lora_alpha``, ``--lora_dropout``) on q/k/v/out projections of
     ``--lora_towers`` (vision, text, both); everything else, the temperature included, frozen.
   * ``adapter``: the paper's CLIP-Adapter: CLIP frozen, a residual MLP on the image features (``--adapter_alpha``
     0.2, ``--adapter_reduction`` 4). With a class-level caption (T0, T1) the objective is the bidirectional
     cross-entropy of the images against the C class text embeddings (``sdx.train.losses.class_text_loss``); with
     per-image captions (T2, T3, T4, mixed) it is the class-aware contrastive loss between the adapted image
     features and the frozen caption embeddings. When ``--method adapter`` is chosen, the paper's recipe
     (Adam, lr 1e-4, 20 epochs, constant schedule) replaces the trainer's defaults for every flag not given
     explicitly (command line or --config); ``--recipe paper`` sets the same values plus the method.
4. Loss: ``--loss class_aware`` (default; same-class pairs are positives) or ``infonce``; features gathered across
   processes with gradients; temperature learnable (except for lora/adapter) and clamped to [0, ln 100]
   (sdx.train.losses).
5. Validation after every epoch: zero-shot classification of the ``validation`` images against the class prompts
   T0 ("A photo of steel surface defect: {class}.") and T1 (the class descriptions). Candidate classes: those with
   at least one image in any split of the loaded dataset (a class declared but without images is not a
   candidate). Metrics in percent: ``t0_accuracy``, ``t0_macc``, ``t1_accuracy``, ``t1_macc``
   (sdx.metrics). The best epoch by ``--metric_for_best_model`` (default t0_accuracy) is kept and reloaded at the
   end; the final model is evaluated the same way on validation and test (the official val split).
6. Outputs in ``--output_dir``: the model (``save_pretrained``; LoRA merged into a plain CLIPModel, the LoRA
   weights alone in ``lora/``; for the adapter, the frozen CLIP plus ``clip_adapter_config.json`` and
   ``clip_adapter.safetensors``), the processor (tokenizer + image processor), ``sdx_run.json`` (the
   run-metadata record of sdx.train.runmeta: caption level, method, origin, classes, seed, data; read by the
   evaluator), ``all_results.json``, a model card
   (README.md) stating the caption level, the method and the initial weights, and optionally a Hub push.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from sdx.data import levels as T

logger = logging.getLogger(__name__)

CAPTION_LEVELS = ("t0", "t1", "t2", "t3", "t4", "mixed")
METHODS = ("full", "lora", "adapter")
EVAL_METRICS = ("t0_accuracy", "t0_macc", "t1_accuracy", "t1_macc")
PAPER_ADAPTER_RECIPE = {"optimizer": "adam", "learning_rate": 1e-4, "num_train_epochs": 20,
                        "lr_scheduler_type": "constant"}
RECIPES = {"paper": dict(PAPER_ADAPTER_RECIPE, method="adapter")}


# ----------------------------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------------------------
def caption_level_arg(value: str) -> str:
    v = str(value).strip().lower()
    if v == "mixed":
        return v
    try:
        return T.normalize_level(v)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{err} or 'mixed'") from None


def build_parser() -> argparse.ArgumentParser:
    from sdx.models.clip import CLIP_PRESETS
    from sdx.models.clip import LORA_TOWERS
    from sdx.train.loop import add_training_args

    p = argparse.ArgumentParser(
        prog="train_clip.py",
        description="Contrastive CLIP training on SteelDefectX captions (T0-T4 or mixed): full fine-tuning, LoRA "
                    "or the CLIP-Adapter, with zero-shot validation each epoch (T0 and T1 class prompts).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", type=str, default=None,
                   help="Hub id or local dir of a CLIP-style model (get_image_features / get_text_features) with "
                        "its processor; without it a random --model_size preset is built")
    g.add_argument("--model_size", choices=sorted(CLIP_PRESETS), default="tiny",
                   help="size preset for a model from scratch (tiny: 32-dim, 2 layers, 32 px; small: 128-dim, 4 "
                        "layers, 64 px; base: CLIP ViT-B/16 shapes)")
    g.add_argument("--tokenizer_vocab_size", type=int, default=2000,
                   help="BPE vocabulary size of the tokenizer trained for a model from scratch")
    g.add_argument("--image_size", type=int, default=None,
                   help="image size of a model from scratch (None: the preset's)")
    g.add_argument("--method", choices=METHODS, default="full",
                   help="full: both towers (+ freezing flags); lora: peft LoRA; adapter: frozen CLIP + CLIP-Adapter "
                        "(paper recipe Adam 1e-4, 20 epochs unless given)")
    g.add_argument("--freeze_vision_model", action="store_true", help="method full: freeze the vision tower")
    g.add_argument("--freeze_text_model", action="store_true", help="method full: freeze the text tower")
    g.add_argument("--lora_towers", choices=LORA_TOWERS, default="both", help="method lora: towers adapted")
    g.add_argument("--lora_r", type=int, default=8, help="LoRA rank")
    g.add_argument("--lora_alpha", type=int, default=16, help="LoRA alpha")
    g.add_argument("--lora_dropout", type=float, default=0.0, help="LoRA dropout")
    g.add_argument("--adapter_alpha", type=float, default=0.2, help="CLIP-Adapter residual ratio")
    g.add_argument("--adapter_reduction", type=int, default=4, help="CLIP-Adapter bottleneck reduction")
    g.add_argument("--loss", choices=("class_aware", "infonce"), default="class_aware",
                   help="contrastive loss: class_aware (same-class pairs are positives) or symmetric InfoNCE")
    d = p.add_argument_group("data")
    d.add_argument("--data_dir", type=str, default="synthetic",
                   help="SteelDefectX folder in the official layout, 'synthetic' (embedded demo data) or 'hub'")
    d.add_argument("--caption_level", type=caption_level_arg, default="t2",
                   help="training text: t0, t1, t2, t3, t4 (aliases accepted) or mixed (one level drawn per "
                        "example per epoch)")
    d.add_argument("--validation_fraction", type=float, default=0.1, help="stratified carve-out of train")
    d.add_argument("--shots", type=int, default=None, help="k training images per class (few-shot)")
    d.add_argument("--classes", nargs="+", default=None, help="train on these classes only")
    d.add_argument("--exclude_classes", nargs="+", default=None, help="leave these classes out")
    d.add_argument("--on_error", choices=("raise", "skip"), default="raise",
                   help="bad raw items: raise naming the file and field, or skip and count them")
    d.add_argument("--annotate_missing", action="store_true",
                   help="compute missing T3/T4 from masks (sdx.annotate.engine) instead of falling back to T1")
    d.add_argument("--dataset_cache_dir", type=str, default=None, help="datasets cache folder")
    d.add_argument("--pixel_cache_mb", type=float, default=1024,
                   help="pre-process the train and validation images once and keep them in memory when they fit "
                        "in this many MB (0: process every batch on the fly; identical pixel values either way)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--metric_for_best_model", choices=EVAL_METRICS, default="t0_accuracy",
                   help="validation metric that picks the best epoch")
    add_training_args(p, recipes=RECIPES, learning_rate=1e-4, per_device_train_batch_size=32)
    return p


def parse_clip_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from sdx.train.loop import parse_args

    parser = build_parser()
    args = parse_args(parser, argv, recipes=RECIPES)
    if args.method == "adapter":
        explicit = set(args.explicit) | set((args.applied_recipe or {}).keys())
        for k, v in PAPER_ADAPTER_RECIPE.items():
            if k not in explicit:
                setattr(args, k, v)
    if args.method != "full" and (args.freeze_vision_model or args.freeze_text_model):
        parser.error("--freeze_vision_model / --freeze_text_model apply to --method full only")
    if args.freeze_vision_model and args.freeze_text_model:
        parser.error("--freeze_vision_model and --freeze_text_model together leave nothing to train")
    for name in ("lora_r", "adapter_reduction", "tokenizer_vocab_size", "per_device_train_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not 0.0 <= args.adapter_alpha <= 1.0:
        parser.error("--adapter_alpha must lie in [0, 1]")
    return args


# ----------------------------------------------------------------------------------------------------------------
# texts
# ----------------------------------------------------------------------------------------------------------------
def level_texts(row: Mapping[str, Any]) -> dict[str, str]:
    """T0..T4 of one dataset row with the dataset's fallback chain applied (T3 rendered as text)."""
    texts = T.row_level_texts(row)
    return {level: T.resolve_caption(texts, level)[0] for level in T.LEVELS}


def class_prompts(ds) -> tuple[list[int], list[str], list[str]]:
    """Candidate class ids (`sdx.data.builder.candidate_classes`), their T0 prompts and T1 texts."""
    from sdx.data.builder import candidate_classes, class_descriptions, class_names

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
    """(image, caption, label) rows; with level 'mixed' the caption level is drawn per example per epoch."""

    def __init__(self, hf_split, caption_level: str, seed: int, pixels: Optional[torch.Tensor] = None):
        self.ds = hf_split.select_columns(["image"])       # rows decode the image only (no mask)
        self.pixels = pixels                                # pre-processed pixel values (see pixel_cache)
        self.level, self.seed, self.epoch = caption_level, int(seed), 0
        if caption_level == "mixed":
            cols = [c for c in ("class_name", "t0", "t1", "t2", "t3", "t4") if c in hf_split.column_names]
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
        return row


def _image_item(ds, pixels: Optional[torch.Tensor], i: int) -> dict[str, Any]:
    return {"pixel_values": pixels[i]} if pixels is not None else {"image": ds[i]["image"]}


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
    from tqdm.auto import tqdm

    out = torch.empty((n,) + tuple(first.shape[1:]), dtype=torch.float32)
    for start in tqdm(range(0, n, batch_size), desc=desc, disable=n <= batch_size):
        chunk = images[start:start + batch_size]["image"]
        out[start:start + len(chunk)] = image_processor(images=[im.convert("RGB") for im in chunk],
                                                        return_tensors="pt")["pixel_values"]
    return out


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
    pixel values; captions -> input_ids/mask (padding, truncation)."""

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
        return batch


# ----------------------------------------------------------------------------------------------------------------
# the trained module
# ----------------------------------------------------------------------------------------------------------------
class ClipTrainModule(nn.Module):
    """What the loop trains: forward(batch) -> scalar loss. Holds the CLIP (plain, peft-wrapped or with adapter).

    For the adapter with class-level captions, ``class_input_ids`` / ``class_attention_mask`` (C rows, one per
    class id) are kept as buffers and embedded with the frozen text tower."""

    def __init__(self, clip: nn.Module, method: str, loss: str, class_text_inputs: Optional[dict] = None):
        super().__init__()
        self.clip, self.method, self.loss_kind = clip, method, loss
        self.class_text_loss = class_text_inputs is not None
        if self.class_text_loss:
            self.register_buffer("class_input_ids", class_text_inputs["input_ids"], persistent=False)
            self.register_buffer("class_attention_mask", class_text_inputs["attention_mask"], persistent=False)

    def forward(self, pixel_values, labels, input_ids=None, attention_mask=None) -> torch.Tensor:
        from sdx.train.losses import class_text_loss, contrastive_loss
        from sdx.models.clip import get_logit_scale, image_features, text_features

        img = image_features(self.clip, pixel_values)
        logit_scale = get_logit_scale(self.clip)
        if self.class_text_loss:
            with torch.no_grad():
                cls = text_features(self.clip, self.class_input_ids, self.class_attention_mask)
            return class_text_loss(img, cls, labels, logit_scale)
        if self.method == "adapter":
            with torch.no_grad():
                txt = text_features(self.clip, input_ids, attention_mask)
        else:
            txt = text_features(self.clip, input_ids, attention_mask)
        return contrastive_loss(img, txt, logit_scale, labels=labels, kind=self.loss_kind)


def _freeze(module: Optional[nn.Module]) -> None:
    if module is not None:
        for prm in module.parameters():
            prm.requires_grad_(False)


def build_clip(args, train_split, all_ds) -> tuple[nn.Module, Any, str]:
    """(clip model, processor, origin): loaded or from scratch, before method wrapping."""
    from sdx.models.clip import build_clip_from_scratch, load_clip

    if args.model_name_or_path:
        model, processor = load_clip(args.model_name_or_path)
        return model, processor, f"pretrained:{args.model_name_or_path}"
    texts: list[str] = []
    cols = [c for c in ("class_name", "t0", "t1", "t2", "t3", "t4") if c in train_split.column_names]
    for row in train_split.select_columns(cols):
        texts.extend(level_texts(row).values())
    _, t0s, t1s = class_prompts(all_ds)
    texts += t0s + t1s
    model, processor = build_clip_from_scratch(args.model_size, texts, vocab_size=args.tokenizer_vocab_size,
                                               image_size=args.image_size, seed=args.seed)
    return model, processor, "random-init"


def wrap_method(args, clip: nn.Module, processor, names: Sequence[str], t1_by_id: Mapping[int, str]
                ) -> ClipTrainModule:
    """The trained module for --method (freezing, LoRA or adapter). `names`: every class name (label order);
    `t1_by_id`: class id -> T1 text (classes with images)."""
    from sdx.models.clip import ClipAdapter, ClipWithAdapter, apply_clip_lora, clip_embed_dim

    if args.method == "full":
        if args.freeze_vision_model:
            _freeze(getattr(clip, "vision_model", None))
            _freeze(getattr(clip, "visual_projection", None))
        if args.freeze_text_model:
            _freeze(getattr(clip, "text_model", None))
            _freeze(getattr(clip, "text_projection", None))
        return ClipTrainModule(clip, "full", args.loss)
    if args.method == "lora":
        peft_model = apply_clip_lora(clip, towers=args.lora_towers, r=args.lora_r, alpha=args.lora_alpha,
                                     dropout=args.lora_dropout)
        return ClipTrainModule(peft_model, "lora", args.loss)
    adapter = ClipAdapter(clip_embed_dim(clip), reduction=args.adapter_reduction, alpha=args.adapter_alpha)
    model = ClipWithAdapter(clip, adapter)
    class_inputs = None
    if args.caption_level in ("t0", "t1"):
        # row c = class id c (classes without images get their T0 prompt; they never appear as labels)
        texts = [T.t0_prompt(n) if args.caption_level == "t0" else t1_by_id.get(i, T.t0_prompt(n))
                 for i, n in enumerate(names)]
        enc = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        class_inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return ClipTrainModule(model, "adapter", args.loss, class_text_inputs=class_inputs)


# ----------------------------------------------------------------------------------------------------------------
# zero-shot evaluation
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def zero_shot_eval(accelerator, clip: nn.Module, loader, tokenizer, class_ids: Sequence[int],
                   prompts: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Zero-shot accuracy / mAcc (percent) of `loader`'s images against each prompt set (name -> C texts), and
    num_samples (images evaluated, each once across processes: gather_for_metrics drops the padding)."""
    from sdx.metrics import accuracy, mean_class_accuracy
    from sdx.models.clip import encode_images, encode_text_list, zero_shot_predict

    was_training = clip.training
    clip.eval()
    device = accelerator.device
    class_ids_t = torch.tensor(list(class_ids), device=device)
    with accelerator.autocast():                          # the training precision (bf16/fp16 or none)
        text_embs = {name: encode_text_list(clip, tokenizer, list(texts), device=device)
                     for name, texts in prompts.items()}
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in prompts}
    labels: list[torch.Tensor] = []
    for batch in loader:
        with accelerator.autocast():
            img = encode_images(clip, batch["pixel_values"].to(device))
        for name, emb in text_embs.items():
            pred = zero_shot_predict(img, emb, class_ids_t)
            preds[name].append(accelerator.gather_for_metrics(pred))
        labels.append(accelerator.gather_for_metrics(batch["labels"].to(device)))
    if was_training:
        clip.train()
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
def _load_data(args):
    from sdx.data.builder import load_steeldefectx

    level = "t2" if args.caption_level == "mixed" else args.caption_level
    return load_steeldefectx(args.data_dir, caption_level=level, validation_fraction=args.validation_fraction,
                             shots=args.shots, seed=args.seed, classes=args.classes,
                             exclude_classes=args.exclude_classes, on_error=args.on_error,
                             annotate_missing=args.annotate_missing, cache_dir=args.dataset_cache_dir)


def _save_final(args, model: ClipTrainModule, processor, out: Path) -> None:
    clip = model.clip
    if args.method == "lora":
        clip.save_pretrained(str(out / "lora"))          # the LoRA weights alone (peft format)
        clip = clip.merge_and_unload()                     # a plain CLIPModel for every reader
        model.clip = clip
    clip.save_pretrained(str(out))
    processor.save_pretrained(str(out))


def run_clip_training(args: argparse.Namespace, step_callback: Optional[Callable[[int], None]] = None
                      ) -> dict[str, Any]:
    """Train as `args` says (see the module docstring) and return the results written to all_results.json."""
    from sdx.data.builder import class_names
    from sdx.data.synthetic import is_synthetic_dir
    from sdx.train.runmeta import RunMetadata
    from sdx.train.loop import (check_output_dir, create_optimizer, limit_samples, load_best, make_accelerator,
                              push_output_dir, resolve_checkpoint, run_training, start_output_dir,
                              write_all_results, write_model_card)

    out = check_output_dir(args)
    resolve_checkpoint(getattr(args, "resume_from_checkpoint", None), out)   # fail fast on a bad checkpoint
    accelerator = make_accelerator(args)
    with accelerator.main_process_first():
        ds = _load_data(args)
    for split in ("train", "validation"):
        if split not in ds or len(ds[split]) == 0:
            raise ValueError(f"the {split} split is empty (data_dir {args.data_dir}, classes {args.classes}, "
                             f"validation_fraction {args.validation_fraction}): nothing to "
                             f"{'train on' if split == 'train' else 'validate on'}")
    train_split = limit_samples(ds["train"], args.max_train_samples, args.seed)
    val_split = limit_samples(ds["validation"], args.max_eval_samples, args.seed)
    test_split = limit_samples(ds["test"], args.max_eval_samples, args.seed) if "test" in ds else None

    class_ids, t0_prompts, t1_prompts = class_prompts(ds)
    names = class_names(ds)
    clip, processor, origin = build_clip(args, train_split, ds)
    model = wrap_method(args, clip, processor, names, dict(zip(class_ids, t1_prompts)))
    trainable = [prm for prm in model.parameters() if prm.requires_grad]
    if not trainable:
        raise ValueError(f"method {args.method}: no trainable parameter")
    n_trainable = sum(prm.numel() for prm in trainable)
    n_total = sum(prm.numel() for prm in model.parameters())
    start_output_dir(args, accelerator)

    budget = [args.pixel_cache_mb]          # shared by the splits, train first

    def cached(split, desc):
        pixels = pixel_cache(split, processor.image_processor, budget[0], desc=desc)
        if pixels is not None:
            budget[0] -= pixels.numel() * 4 / 2 ** 20
        return pixels

    train_set = CaptionDataset(train_split, args.caption_level, args.seed, cached(train_split, "train images"))
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.per_device_train_batch_size, sampler=EpochShuffleSampler(train_set, args.seed),
        collate_fn=ClipCollator(processor), num_workers=args.dataloader_num_workers, drop_last=False)
    eval_collate = ClipCollator(processor, with_text=False)

    def eval_loader(split, pixels=None):
        return accelerator.prepare(torch.utils.data.DataLoader(
            ImageDataset(split, pixels), batch_size=args.per_device_eval_batch_size, shuffle=False,
            collate_fn=eval_collate, num_workers=args.dataloader_num_workers))

    val_loader = eval_loader(val_split, cached(val_split, "validation images"))
    prompts = {"t0": t0_prompts, "t1": t1_prompts}

    def evaluate(prepared) -> dict[str, float]:
        return zero_shot_eval(accelerator, accelerator.unwrap_model(prepared).clip, val_loader,
                              processor.tokenizer, class_ids, prompts)

    optimizer = create_optimizer(args, model)
    result = run_training(args, accelerator, model, optimizer, train_loader, compute_loss=lambda m, b: m(**b),
                          evaluate=evaluate, select_metric=args.metric_for_best_model, step_callback=step_callback)
    if result.best_dir is not None:
        model = load_best(accelerator, result.model, result.best_dir)
    else:
        model = accelerator.unwrap_model(result.model)
    metrics: dict[str, Any] = {}
    for name, split in (("validation", val_split), ("test", test_split)):
        if split is not None and len(split):
            loader = val_loader if name == "validation" else eval_loader(split)
            for k, v in zero_shot_eval(accelerator, model.clip, loader, processor.tokenizer,
                                       class_ids, prompts).items():
                metrics[f"{name}_{k}"] = v
    summary = result.summary()
    frozen = [t for t, f in (("vision", args.freeze_vision_model), ("text", args.freeze_text_model)) if f]
    meta = RunMetadata(kind="clip", origin=origin, method=args.method, seed=args.seed, data=str(args.data_dir),
                       synthetic=is_synthetic_dir(args.data_dir), caption_level=args.caption_level, loss=args.loss,
                       train_classes=sorted({names[i] for i in set(train_set.labels)}),
                       exclude_classes=list(args.exclude_classes or []), select_metric=args.metric_for_best_model,
                       details={"lora_towers": args.lora_towers if args.method == "lora" else None,
                                "frozen": frozen})
    results = {**metrics, **{f"train_{k}" if not k.startswith("train") else k: v for k, v in summary.items()
                             if k != "history"},
               "history": summary.get("history"), "caption_level": args.caption_level, "method": args.method,
               "init": origin, "loss": args.loss, "num_processes": accelerator.num_processes,
               "trainable_parameters": n_trainable,
               "total_parameters": n_total, "candidate_classes": [names[i] for i in class_ids],
               "splits": {"train": len(train_split), "validation": len(val_split),
                          "test": len(test_split) if test_split is not None else 0}}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_final(args, model, processor, out)
        meta.write(out)
        write_all_results(out, results)
        method_text = {"full": "full contrastive fine-tuning" + (
            f" (frozen: {', '.join(frozen)})" if frozen else ""),
            "lora": f"LoRA (r={args.lora_r}, alpha={args.lora_alpha}) on the {args.lora_towers} tower(s)",
            "adapter": f"CLIP-Adapter (alpha={args.adapter_alpha}, reduction={args.adapter_reduction}) on a "
                       "frozen CLIP"}[args.method]
        init_text = (f"`{args.model_name_or_path}`" if args.model_name_or_path
                     else f"random initialisation (preset `{args.model_size}`, tokenizer trained on the "
                          "training captions)")
        write_model_card(
            out, model_name=out.resolve().name, task="zero-shot-image-classification",
            base_model=args.model_name_or_path, init="pretrained" if args.model_name_or_path else "random",
            dataset={"name": "SteelDefectX", "data_dir": str(args.data_dir),
                     "config": T.LEVEL_CONFIGS.get(args.caption_level, "mixed"),
                     "caption_level": args.caption_level, "splits": results["splits"],
                     "synthetic": is_synthetic_dir(args.data_dir)},
            metrics={k: v for k, v in metrics.items() if not k.endswith("num_samples")},
            tags=["clip", "contrastive", f"caption-{args.caption_level}", args.method],
            hyperparameters={k: getattr(args, k) for k in (
                "method", "caption_level", "loss", "learning_rate", "optimizer", "num_train_epochs",
                "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "seed")},
            command_line=args.command_line,
            extra_sections={"Caption level, method, initial weights": (
                f"- caption level used for training: **{args.caption_level.upper()}**"
                + (" (one of T0-T4 drawn per example per epoch)" if args.caption_level == "mixed" else "")
                + f"\n- method: **{method_text}**\n- loss: {args.loss}\n- initial weights: {init_text}\n"
                "- validation: zero-shot accuracy with T0 and T1 class prompts on a stratified carve-out of "
                f"train; best epoch by {args.metric_for_best_model}"
                + ("\n- **data: the embedded SYNTHETIC demo set, not steel photographs; these numbers say nothing "
                   "about SteelDefectX**" if is_synthetic_dir(args.data_dir) else ""))})
        if args.push_to_hub:
            push_output_dir(out, args.hub_model_id, token=args.hub_token, private=args.hub_private)
    accelerator.wait_for_everyone()
    return results


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """train_clip.py: parse the arguments and train."""
    return run_clip_training(parse_clip_args(argv))
