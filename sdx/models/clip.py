"""CLIP models: loading (Hub id or local dir), from-scratch presets with a local tokenizer, encoding, LoRA and
the CLIP-Adapter.

* Loading: `load_clip(name_or_path)` takes a Hub id or a local dir. An adapter folder (a CLIP-Adapter:
  CLIP_ADAPTER_CONFIG + CLIP_ADAPTER_WEIGHTS; or unmerged LoRA in peft's format) holds the adapter only and names
  its base: `load_clip` composes base + adapter (a `ClipWithAdapter`, same get_image_features /
  get_text_features interface, or the LoRA merged into its base). Such a folder has no config.json of a full
  model, so stock loaders refuse it instead of silently running the base. A base that exists nowhere else (random
  initialisation) is saved once in its BASE_SUBFOLDER and named by that relative path.
* From scratch: `build_clip_from_scratch(size, texts)` with a size preset of CLIP_PRESETS (tiny / small / base)
  and a byte-level BPE tokenizer trained locally on `texts` (no download) with CLIP's normaliser, pre-tokeniser,
  "</w>" word suffix and special tokens (<|startoftext|> id 0, <|endoftext|> id 1 = eos = pad); every byte
  symbol, with and without "</w>", is in the vocabulary, so no text ever maps to the unknown token. The text
  config's eos_token_id is 1, so CLIP pools at the first <|endoftext|>. Texts longer than the model's
  max_position_embeddings are truncated (presets: 128 tokens, enough for rendered T3).
* Features: `encode_images` / `encode_texts` return L2-normalised embeddings; they accept models whose
  get_*_features return a tensor or an output object (transformers 5: `.pooler_output`; else `.image_embeds` /
  `.text_embeds`; else the first element).
* Token budget: `set_text_max_length` sets the tokenizer to ``--max_seq_length`` or the model's text positions
  (raised or lowered); `TruncationCounter` counts per level the texts the budget cuts. Long texts: Long-CLIP's
  position stretch (`stretch_text_positions`, `keep_position_rows`) and the ``sdx_lineage`` config record
  (docs/long_captions.md).
* LoRA: peft on q_proj / k_proj / v_proj / out_proj of the chosen towers (vision, text, both); everything else
  frozen. train_clip.py saves it merged (plain CLIPModel, the LoRA weights in `lora/`) or unmerged (peft's format
  only, `base_model_name_or_path` always set).
* CLIP-Adapter (Gao et al.): image feature f -> alpha * MLP(f) + (1 - alpha) * f, MLP = Linear(D, D/r) - ReLU
  - Linear(D/r, D) - ReLU without biases; alpha 0.2 and reduction r 4 by default; CLIP itself frozen.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from sdx.models.classifiers import parse_config_overrides
from sdx.models.tokenizer import build_clip_tokenizer

CLIP_PRESETS: dict[str, dict[str, Any]] = {
    # (hidden, layers, heads, mlp) per tower; image size and patch; shared projection dim
    "tiny": dict(text=(32, 2, 2, 64), vision=(32, 2, 2, 64), image_size=32, patch_size=16, projection_dim=32,
                 max_text_length=128),
    "small": dict(text=(128, 4, 4, 512), vision=(128, 4, 4, 512), image_size=64, patch_size=8,
                  projection_dim=128, max_text_length=128),
    "base": dict(text=(512, 12, 8, 2048), vision=(768, 12, 12, 3072), image_size=224, patch_size=16,
                 projection_dim=512, max_text_length=128),   # CLIP ViT-B/16 shapes (77 -> 128 text positions)
}
CLIP_ADAPTER_CONFIG = "clip_adapter_config.json"
CLIP_ADAPTER_WEIGHTS = "clip_adapter.safetensors"
CLIP_ADAPTER_FORMAT = 2   # 2: the adapter only, the base named; 1 (read only): a full copy of the base beside it
PEFT_CONFIG = "adapter_config.json"
BASE_SUBFOLDER = "base"   # where an adapter folder keeps a base that exists nowhere else (random initialisation)
LORA_TOWERS = ("vision", "text", "both")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
DEFAULT_TEXT_LENGTH = 77          # CLIP's text positions, for a model whose config names none


def _clip_image_processor(image_size: int):
    try:
        import torchvision  # noqa: F401
        from transformers import CLIPImageProcessor as _IP
    except ImportError:
        from transformers import CLIPImageProcessorPil as _IP
    return _IP(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_clip_from_scratch(size: str, texts: Iterable[str], vocab_size: int = 2000,
                            max_text_length: Optional[int] = None, image_size: Optional[int] = None,
                            seed: Optional[int] = None, vision_overrides: str | Mapping[str, Any] | None = None):
    """A randomly initialised CLIPModel of a size preset, with a locally trained tokenizer and its processor.

    vision_overrides: vision-tower config values in place of the preset's ("patch_size=8,hidden_size=64", as
    `parse_config_overrides` reads them). Returns (model, processor); processor.tokenizer is the CLIPTokenizer,
    processor.image_processor resizes to the preset's image size (shortest edge, then centre crop)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    if size not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP size preset {size!r}: use one of {', '.join(CLIP_PRESETS)}")
    p = CLIP_PRESETS[size]
    tokenizer = build_clip_tokenizer(texts, vocab_size=vocab_size)
    image_size = int(image_size or p["image_size"])
    th, tl, ta, tm = p["text"]
    vh, vl, va, vm = p["vision"]
    vision = dict(hidden_size=vh, num_hidden_layers=vl, num_attention_heads=va, intermediate_size=vm,
                  image_size=image_size, patch_size=p["patch_size"])
    vision.update(parse_config_overrides(vision_overrides))
    if vision["image_size"] % vision["patch_size"]:
        raise ValueError(f"image_size {vision['image_size']} is not a multiple of the patch size "
                         f"{vision['patch_size']}")
    config = CLIPConfig(
        text_config=dict(hidden_size=th, num_hidden_layers=tl, num_attention_heads=ta, intermediate_size=tm,
                         vocab_size=len(tokenizer), max_position_embeddings=int(max_text_length or
                                                                                 p["max_text_length"]),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=vision,
        projection_dim=p["projection_dim"])
    if seed is not None:
        torch.manual_seed(seed)
    model = CLIPModel(config)
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    processor = CLIPProcessor(image_processor=_clip_image_processor(vision["image_size"]), tokenizer=tokenizer)
    return model, processor


def _fix_tokenizer_max_length(processor, model) -> None:
    """The processor's tokenizer set to the model's text positions, lowered or raised (`set_text_max_length`)."""
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        set_text_max_length(tok, model)


def load_clip(model_name_or_path: str, **kwargs):
    """(model, processor) from a Hub id or a local dir; a dir with a CLIP-Adapter gives a ClipWithAdapter."""
    from transformers import AutoModel, AutoProcessor

    path = Path(str(model_name_or_path))
    if path.exists() and not path.is_dir():
        raise ValueError(f"--model_name_or_path {model_name_or_path}: a file, expected a Hub id or a directory")
    if path.is_dir() and (path / CLIP_ADAPTER_CONFIG).is_file():
        return ClipWithAdapter.from_pretrained(path, **kwargs)
    if path.is_dir() and (path / PEFT_CONFIG).is_file() and not (path / "config.json").is_file():
        return load_clip_lora(path, **kwargs)
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


def load_clip_parts(path: str):
    """(model, image processor, tokenizer) of a CLIP-family checkpoint: `load_clip` (adapter folders included),
    with the image processor or tokenizer read on their own where the processor lacks one."""
    from transformers import AutoImageProcessor, AutoTokenizer

    try:
        model, processor = load_clip(path)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: cannot load a CLIP-family model ({err})") from err
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        try:
            image_processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: no image processor (preprocessor_config.json) found ({err})") from err
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        tokenizer = processor if hasattr(processor, "batch_decode") else AutoTokenizer.from_pretrained(path)
    return model, image_processor, tokenizer


def _embedding_from_output(out: Any, kind: str) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    for attr in ("pooler_output", f"{kind}_embeds"):
        value = getattr(out, attr, None)
        if value is not None:
            return value
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    raise TypeError(f"cannot find the {kind} embedding in a {type(out).__name__}")


def image_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image embeddings (not normalised)."""
    return _embedding_from_output(model.get_image_features(pixel_values=pixel_values), "image")


def text_features(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                  ) -> torch.Tensor:
    """Projected text embeddings (not normalised)."""
    return _embedding_from_output(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask),
                                  "text")


def encode_images(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings (B, D); works for CLIPModel, peft-wrapped CLIP and ClipWithAdapter."""
    return torch.nn.functional.normalize(image_features(model, pixel_values).float(), dim=-1)


def encode_texts(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """L2-normalised text embeddings (B, D)."""
    return torch.nn.functional.normalize(text_features(model, input_ids, attention_mask).float(), dim=-1)


def text_positions(model) -> Optional[int]:
    """The text tower's position count (``text_config.max_position_embeddings``), None when the model has none."""
    cfg = getattr(getattr(model, "config", None), "text_config", None)
    value = getattr(cfg, "max_position_embeddings", None)
    return int(value) if value else None


def set_text_max_length(tokenizer, model, max_length: Optional[int] = None) -> int:
    """Set the token budget of every text this tokenizer encodes for `model` (training, validation, benchmark):
    ``max_length`` (``--max_seq_length``), or the model's text positions when None; the tokenizer's
    ``model_max_length`` is set to it, lowered or raised (an OpenAI-style tokenizer config says 77 even beside a
    248-position text tower). A budget above the model's positions raises. Returns the budget."""
    positions = text_positions(model)
    if max_length is None:
        own = getattr(tokenizer, "model_max_length", None)
        max_length = positions or (int(own) if own and own < 10 ** 6 else DEFAULT_TEXT_LENGTH)
    max_length = int(max_length)
    if max_length < 3:
        raise ValueError(f"--max_seq_length {max_length}: a text needs at least 3 tokens (start, one, end)")
    if positions and max_length > positions:
        raise ValueError(f"--max_seq_length {max_length} exceeds the model's {positions} text positions "
                         f"(text_config.max_position_embeddings); train_clip.py --stretch_positions {max_length} "
                         "makes a longer text tower")
    tokenizer.model_max_length = max_length
    return max_length


def text_max_length(model, tokenizer) -> int:
    """Tokens a text may hold: the model's text positions, or the tokenizer's limit when that is lower."""
    limits = [text_positions(model), getattr(tokenizer, "model_max_length", None)]
    limits = [int(v) for v in limits if v and v < 10 ** 6]
    return min(limits) if limits else DEFAULT_TEXT_LENGTH


@torch.no_grad()
def encode_text_list(model, tokenizer, texts: Sequence[str], batch_size: int = 64, device=None,
                     max_length: Optional[int] = None) -> torch.Tensor:
    """Normalised embeddings of a list of strings (padding, truncation at ``max_length`` or the model's limit),
    (len(texts), D)."""
    device = device or next(model.parameters()).device
    max_length = max_length or text_max_length(model, tokenizer)
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        out.append(encode_texts(model, enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def encode_images_and_patches(model, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised image embeddings [B, D], normalised projected patch tokens [B, P, D]) from one vision pass.

    Patch tokens: the vision tower's last hidden state without the CLS token, through post_layernorm and
    visual_projection (the CLIP-style models of transformers); the adapter of a ClipWithAdapter acts on the
    pooled embedding only."""
    base = getattr(model, "clip", model)
    if not (hasattr(base, "vision_model") and hasattr(base, "visual_projection")):
        raise TypeError(f"{type(base).__name__} has no vision_model / visual_projection: no patch tokens")
    out = base.get_image_features(pixel_values=pixel_values)
    emb = _embedding_from_output(out, "image")
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:  # a model returning a bare tensor: one extra vision pass
        hidden = base.vision_model(pixel_values=pixel_values).last_hidden_state
    if base is not model:
        emb = model.adapter(emb.float())
    tokens = base.visual_projection(base.vision_model.post_layernorm(hidden[:, 1:]))
    return (torch.nn.functional.normalize(emb.float(), dim=-1),
            torch.nn.functional.normalize(tokens.float(), dim=-1))


def zero_shot_predict(image_emb, class_emb, class_ids):
    """Zero-shot classification, the one rule of training-time validation and the benchmark: each image gets the
    id of the class whose text embedding is most similar (both L2-normalised). Works on torch tensors and numpy
    arrays alike (``class_ids`` of the same kind); ties go to the first class in ``class_ids`` order."""
    return class_ids[(image_emb @ class_emb.T).argmax(1)]


# ----------------------------------------------------------------------------------------------------------------
# long texts: token budget counts, Long-CLIP position stretching, lineage (docs/long_captions.md)
# ----------------------------------------------------------------------------------------------------------------
TRUNCATION_WARNING_SHARE = 0.01   # a level with more than this share of its texts truncated is warned about
KEEP_POSITIONS = 20               # Long-CLIP's k: the leading text positions kept as trained
LONG_CLIP = "Long-CLIP"           # the family name in a config's sdx_lineage
LINEAGE_KEY = "sdx_lineage"       # config.json attribute: where the weights came from (family, conversion, stretch)


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text with its start and end tokens, untruncated: what a budget has to hold."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]


def truncation_stats(lengths: Sequence[int], max_length: int) -> dict[str, Any]:
    """Texts, texts truncated at ``max_length`` tokens (count, share), tokens lost per truncated text (mean,
    max) and the longest text, in tokens."""
    lost = [n - max_length for n in lengths if n > max_length]
    return {"texts": len(lengths), "truncated": len(lost),
            "truncated_share": len(lost) / len(lengths) if lengths else 0.0,
            "tokens_lost_mean": sum(lost) / len(lost) if lost else 0.0, "tokens_lost_max": max(lost, default=0),
            "longest": max(lengths, default=0)}


class TruncationCounter:
    """Per text level, the distinct texts a run encodes and how many of them its token budget cuts."""

    def __init__(self, tokenizer, max_length: int, positions: Optional[int] = None,
                 warning_share: float = TRUNCATION_WARNING_SHARE):
        self.tokenizer, self.max_length, self.positions = tokenizer, int(max_length), positions
        self.warning_share = float(warning_share)
        self.lengths: dict[str, dict[str, int]] = {}

    def add(self, level: str, texts: Iterable[str]) -> None:
        seen = self.lengths.setdefault(level, {})
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(zip(new, token_lengths(self.tokenizer, new)))

    def summary(self) -> dict[str, Any]:
        """{"max_length", "text_positions", "warning_share", "levels": {level: truncation_stats + "warning"}}."""
        levels = {}
        for level, seen in self.lengths.items():
            stats = truncation_stats(list(seen.values()), self.max_length)
            levels[level] = dict(stats, warning=stats["truncated_share"] > self.warning_share)
        return {"max_length": self.max_length, "text_positions": self.positions,
                "warning_share": self.warning_share, "levels": levels}


def format_truncation(summary: dict[str, Any], name: str = "") -> list[str]:
    """Printable lines of a `TruncationCounter.summary`: one per level, warned levels marked."""
    head = (f"text budget{' of ' + name if name else ''}: {summary['max_length']} tokens (text positions "
            f"{summary.get('text_positions') or 'unknown'})")
    lines = [head]
    for level, s in summary["levels"].items():
        lines.append(f"  {level}: {s['truncated']} of {s['texts']} distinct texts truncated "
                     f"({100 * s['truncated_share']:.1f} %), tokens lost mean {s['tokens_lost_mean']:.1f} / max "
                     f"{s['tokens_lost_max']}, longest {s['longest']}" + ("  <-- WARNING" if s["warning"] else ""))
    return lines


def truncation_warnings(summary: dict[str, Any], name: str = "") -> list[str]:
    """One message per level whose truncated share exceeds the summary's warning share."""
    return [f"TRUNCATION{' (' + name + ')' if name else ''}: {s['truncated']} of {s['texts']} texts of {level} "
            f"({100 * s['truncated_share']:.1f} %, above {100 * summary['warning_share']:g} %) lose up to "
            f"{s['tokens_lost_max']} tokens at the {summary['max_length']}-token budget; raise --max_seq_length "
            "(up to the model's text positions) or use a long-text model (--stretch_positions, docs/long_captions.md)"
            for level, s in summary["levels"].items() if s["warning"]]


def stretched_positions(old: torch.Tensor, n: int, keep: int = KEEP_POSITIONS) -> torch.Tensor:
    """Long-CLIP's knowledge-preserving stretch of an (L, D) position table to (n, D) rows.

    Rows below ``keep`` stay as they are. Row p >= keep is the old table read at x = keep + (p - keep) * (L - keep)
    / (n - keep): linear interpolation between rows floor(x) and floor(x) + 1, and past row L - 1 the linear
    extrapolation of the last two rows. For L = 77, n = 248 (4 new rows per old one) this is the reference rule
    exactly: new[k + 4i + j] = ((4 - j) old[k + i] + j old[k + i + 1]) / 4 and new[n - 4 + j] = old[L - 1] +
    j (old[L - 1] - old[L - 2]) / 4."""
    rows = old.shape[0]
    if rows <= keep + 1:
        raise ValueError(f"a {rows}-row position table has nothing to stretch past the {keep} kept rows")
    if n <= rows:
        raise ValueError(f"--stretch_positions {n}: must exceed the model's {rows} text positions")
    src = old.detach().double()
    x = keep + (torch.arange(keep, n, dtype=torch.float64) - keep) * (rows - keep) / (n - keep)
    i = x.floor().long().clamp(max=rows - 2)
    w = (x - i).unsqueeze(1)
    tail = (1 - w) * src[i] + w * src[i + 1]
    return torch.cat([old.detach()[:keep], tail.to(old.dtype)])


def _text_embeddings(model) -> nn.Module:
    emb = getattr(getattr(model, "text_model", None), "embeddings", None)
    if emb is None or not isinstance(getattr(emb, "position_embedding", None), nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no text_model.embeddings.position_embedding table: "
                        "only transformers CLIP-style text towers can be stretched")
    return emb


def stretch_text_positions(model, n: int, keep: int = KEEP_POSITIONS) -> int:
    """Stretch the text position table of a transformers CLIP to ``n`` rows in place (`stretched_positions`):
    a new embedding, the position_ids buffer and ``text_config.max_position_embeddings`` follow, and the config's
    sdx_lineage records the stretch. Returns the old position count."""
    emb = _text_embeddings(model)
    old = emb.position_embedding.weight
    table = nn.Embedding(n, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        table.weight.copy_(stretched_positions(old, n, keep))
    emb.position_embedding = table
    emb.register_buffer("position_ids", torch.arange(n, device=old.device).expand((1, -1)), persistent=False)
    before = int(old.shape[0])
    for cfg in {id(c): c for c in (model.config.text_config, getattr(model.text_model, "config", None)) if c}.values():
        cfg.max_position_embeddings = int(n)
    update_lineage(model, stretched={"from": before, "to": int(n), "keep": int(keep), "rule": "Long-CLIP"})
    return before


class _KeepLeadingRows(nn.Module):
    """Parametrisation: the leading rows of a table are a fixed copy, the rest stays trainable."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("rows", rows.detach().clone(), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.rows.to(weight.dtype), weight[self.rows.shape[0]:]])


def keep_position_rows(model, keep: int = KEEP_POSITIONS) -> None:
    """Hold the first ``keep`` text positions fixed while the rest trains, as Long-CLIP's fine-tuning does.

    A parametrisation (torch.nn.utils.parametrize) rather than a gradient mask: the rows stay exact under any
    optimizer, weight decay included. `release_position_rows` removes it before saving."""
    from torch.nn.utils import parametrize

    table = _text_embeddings(model).position_embedding
    parametrize.register_parametrization(table, "weight", _KeepLeadingRows(table.weight[:keep]))


def release_position_rows(model) -> None:
    """Remove `keep_position_rows`' parametrisation (the table keeps its values); no-op when there is none."""
    from torch.nn.utils import parametrize

    table = _text_embeddings(model).position_embedding
    if parametrize.is_parametrized(table, "weight"):
        parametrize.remove_parametrizations(table, "weight", leave_parametrized=True)


def model_lineage(model) -> dict[str, Any]:
    """Where a CLIP's weights came from, as its config records it (``sdx_lineage``: family, conversion,
    stretch); {} when the config records nothing."""
    value = getattr(getattr(model, "config", None), LINEAGE_KEY, None)
    return dict(value) if isinstance(value, dict) else {}


def update_lineage(model, **entries: Any) -> None:
    """Add entries to the config's ``sdx_lineage`` (saved in config.json with the weights)."""
    setattr(model.config, LINEAGE_KEY, {**model_lineage(model), **entries})


VIT_SIZES = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H", (1664, 48): "bigG"}


def vision_architecture(model) -> str:
    """"ViT-L/14"-style name of a CLIP's vision tower from its config (width, layers, patch)."""
    cfg = getattr(getattr(model, "config", None), "vision_config", None)
    if cfg is None:
        return "unknown"
    width, layers, patch = (getattr(cfg, k, None) for k in ("hidden_size", "num_hidden_layers", "patch_size"))
    size = VIT_SIZES.get((width, layers))
    return f"ViT-{size}/{patch}" if size else f"ViT {width}x{layers}/{patch}"


class ClipEncoder:
    """A loaded CLIP-family model with its image processor and tokenizer, encoding PIL images and strings to
    normalised numpy embeddings with the functions above (the evaluator's and the tools' view of a CLIP)."""

    def __init__(self, model, image_processor, tokenizer, device=None, max_length: Optional[int] = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.base = getattr(model, "clip", model)
        self.max_length = set_text_max_length(tokenizer, self.base, max_length)
        self.can_localize = hasattr(self.base, "visual_projection") and hasattr(self.base, "vision_model")

    @classmethod
    def from_pretrained(cls, name_or_path: str, device=None, max_length: Optional[int] = None) -> "ClipEncoder":
        return cls(*load_clip_parts(name_or_path), device=device, max_length=max_length)

    @torch.inference_mode()
    def encode_images(self, images, with_patches: bool = False):
        """(embeddings [B, D], patch tokens [B, P, D] or None) of PIL images (converted to RGB)."""
        pix = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        pix = pix.to(self.device)
        if with_patches:
            emb, patches = encode_images_and_patches(self.model, pix)
            return emb.cpu().numpy(), patches.cpu().numpy()
        return encode_images(self.model, pix).cpu().numpy(), None

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 128):
        return encode_text_list(self.model, self.tokenizer, list(texts), batch_size=batch_size, device=self.device,
                                max_length=self.max_length).cpu().numpy()


def get_logit_scale(model) -> torch.Tensor:
    """The model's learnable log inverse temperature (CLIP's `logit_scale`), or ln(1/0.07) as a constant."""
    for obj in (model, getattr(model, "clip", None), getattr(model, "base_model", None)):
        ls = getattr(obj, "logit_scale", None) if obj is not None else None
        if ls is not None:
            return ls
    return torch.tensor(math.log(1 / 0.07))


def lora_target_regex(towers: str = "both", targets: Iterable[str] = LORA_TARGETS) -> str:
    if towers not in LORA_TOWERS:
        raise ValueError(f"unknown --lora_towers {towers!r}: use one of {', '.join(LORA_TOWERS)}")
    tower = {"vision": "vision_model", "text": "text_model", "both": "(?:vision_model|text_model)"}[towers]
    return rf".*{tower}\.encoder\.layers\.\d+\.self_attn\.(?:{'|'.join(targets)})"


def apply_clip_lora(model, towers: str = "both", r: int = 8, alpha: int = 16, dropout: float = 0.0):
    """Wrap `model` with peft LoRA on the attention projections of the chosen towers; the rest is frozen."""
    from peft import LoraConfig, get_peft_model

    pattern = lora_target_regex(towers)
    names = [n for n, _ in model.named_modules() if re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"no attention projection ({', '.join(LORA_TARGETS)}) found in the {towers} tower(s) of "
                         f"{type(model).__name__}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    return get_peft_model(model, config)


class ClipAdapter(nn.Module):
    """CLIP-Adapter residual MLP on image features: alpha * MLP(f) + (1 - alpha) * f."""

    def __init__(self, embed_dim: int, reduction: int = 4, alpha: float = 0.2):
        super().__init__()
        if embed_dim < reduction or reduction < 1:
            raise ValueError(f"adapter: embed_dim {embed_dim} and reduction {reduction} give no hidden units")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"adapter alpha must lie in [0, 1], got {alpha}")
        self.embed_dim, self.reduction, self.alpha = int(embed_dim), int(reduction), float(alpha)
        self.fc = nn.Sequential(nn.Linear(embed_dim, embed_dim // reduction, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(embed_dim // reduction, embed_dim, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.fc(x) + (1.0 - self.alpha) * x

    def config_dict(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "reduction": self.reduction, "alpha": self.alpha}


class ClipWithAdapter(nn.Module):
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

    def get_image_features(self, pixel_values=None, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            f = _embedding_from_output(self.clip.get_image_features(pixel_values=pixel_values, **kwargs), "image")
        return self.adapter(f.float())

    def get_text_features(self, input_ids=None, attention_mask=None, **kwargs) -> torch.Tensor:
        return _embedding_from_output(self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                                  **kwargs), "text")

    def save_pretrained(self, save_directory, base_model_name_or_path: Optional[str] = None, processor=None) -> None:
        """Write the adapter only: CLIP_ADAPTER_WEIGHTS and CLIP_ADAPTER_CONFIG (type, format, the base, the
        adapter's shape). The base is named (`base_reference`): a Hub id or a local folder as given, or, without
        one, saved once with ``processor`` in BASE_SUBFOLDER."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        base = base_reference(out, base_model_name_or_path, self.clip, processor)
        cfg = {"type": "clip-adapter", "format": CLIP_ADAPTER_FORMAT, "base_model_name_or_path": base,
               **self.adapter.config_dict()}
        (out / CLIP_ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()},
                  str(out / CLIP_ADAPTER_WEIGHTS))

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """(ClipWithAdapter, processor) from an adapter folder: its base (`adapter_base`) with the adapter on it,
        and the processor saved in the folder."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoProcessor

        path = Path(path)
        cfg_file, w_file = path / CLIP_ADAPTER_CONFIG, path / CLIP_ADAPTER_WEIGHTS
        try:
            cfg = json.loads(cfg_file.read_text())
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
        base = adapter_base(path)
        try:
            clip = AutoModel.from_pretrained(base, **kwargs)
        except OSError as err:
            raise OSError(f"{cfg_file}: cannot load its base model {base!r} ({err})") from err
        processor = AutoProcessor.from_pretrained(str(path))
        _fix_tokenizer_max_length(processor, clip)
        return cls(clip, adapter), processor


def base_reference(folder: Path, base_model_name_or_path: Optional[str], base_model=None, processor=None) -> str:
    """How an adapter folder names its base: a local folder by its absolute path, a Hub id as given; without a
    name (a randomly initialised base, which exists nowhere else) ``base_model`` and ``processor`` are saved once
    in ``folder/BASE_SUBFOLDER`` and named by that relative path."""
    if base_model_name_or_path:
        local = Path(base_model_name_or_path)
        return str(local.resolve()) if local.is_dir() else str(base_model_name_or_path)
    if base_model is None:
        raise ValueError(f"{folder}: an adapter whose base has no name needs the base model, to save it beside it")
    base_model.save_pretrained(folder / BASE_SUBFOLDER)
    if processor is not None:
        processor.save_pretrained(folder / BASE_SUBFOLDER)
    return BASE_SUBFOLDER


def adapter_base(folder) -> Optional[str]:
    """The loadable base of an adapter folder (CLIP-Adapter or peft LoRA), None for a folder that is not one:
    a relative name is resolved inside the folder; a format-1 CLIP-Adapter folder is its own base."""
    folder = Path(folder)
    if (folder / CLIP_ADAPTER_CONFIG).is_file():
        try:
            name = json.loads((folder / CLIP_ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
        except ValueError as err:
            raise ValueError(f"{folder / CLIP_ADAPTER_CONFIG}: not valid JSON ({err})") from err
        if not name and (folder / "config.json").is_file():
            return str(folder)
    elif (folder / PEFT_CONFIG).is_file() and not (folder / "config.json").is_file():
        name = json.loads((folder / PEFT_CONFIG).read_text()).get("base_model_name_or_path")
    else:
        return None
    if not name:
        raise ValueError(f"{folder}: the adapter names no base model (field 'base_model_name_or_path' is empty)")
    inside = folder / name
    return str(inside) if not Path(name).is_absolute() and inside.is_dir() else str(name)


def load_clip_lora(path, **kwargs):
    """(CLIP with the LoRA weights merged, processor) from an unmerged LoRA folder in peft's format."""
    from peft import PeftModel
    from transformers import AutoModel, AutoProcessor

    base = adapter_base(path)
    try:
        model = AutoModel.from_pretrained(base, **kwargs)
    except OSError as err:
        raise OSError(f"{Path(path) / PEFT_CONFIG}: cannot load its base model {base!r} ({err})") from err
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    processor = AutoProcessor.from_pretrained(str(path))
    _fix_tokenizer_max_length(processor, model)
    return model, processor


def clip_embed_dim(model) -> int:
    cfg = getattr(model, "config", None)
    dim = getattr(cfg, "projection_dim", None)
    if dim is None:
        raise ValueError(f"{type(model).__name__}: config has no projection_dim")
    return int(dim)
