"""CLIP models: loading (Hub id or local dir), from-scratch presets with a local tokenizer, encoding, LoRA and
the CLIP-Adapter.

* Loading: `load_clip(name_or_path)` takes a Hub id or a local dir. A dir written by train_clip.py may hold a
  CLIP-Adapter (files CLIP_ADAPTER_CONFIG + CLIP_ADAPTER_WEIGHTS beside the frozen CLIP): it then returns a
  `ClipWithAdapter`, which has the same get_image_features / get_text_features interface.
* From scratch: `build_clip_from_scratch(size, texts)` with a size preset of CLIP_PRESETS (tiny / small / base)
  and a byte-level BPE tokenizer trained locally on `texts` (no download) with CLIP's normaliser, pre-tokeniser,
  "</w>" word suffix and special tokens (<|startoftext|> id 0, <|endoftext|> id 1 = eos = pad); every byte
  symbol, with and without "</w>", is in the vocabulary, so no text ever maps to the unknown token. The text
  config's eos_token_id is 1, so CLIP pools at the first <|endoftext|>. Texts longer than the model's
  max_position_embeddings are truncated (presets: 128 tokens, enough for rendered T3).
* Features: `encode_images` / `encode_texts` return L2-normalised embeddings; they accept models whose
  get_*_features return a tensor or an output object (transformers 5: `.pooler_output`; else `.image_embeds` /
  `.text_embeds`; else the first element).
* LoRA: peft on q_proj / k_proj / v_proj / out_proj of the chosen towers (vision, text, both); everything else
  frozen. Saved merged (plain CLIPModel) with the LoRA weights in the `lora/` subfolder.
* CLIP-Adapter (Gao et al.): image feature f -> alpha * MLP(f) + (1 - alpha) * f, MLP = Linear(D, D/r) - ReLU
  - Linear(D/r, D) - ReLU without biases; alpha 0.2 and reduction r 4 by default; CLIP itself frozen.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

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
LORA_TOWERS = ("vision", "text", "both")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _clip_image_processor(image_size: int):
    try:
        import torchvision  # noqa: F401
        from transformers import CLIPImageProcessor as _IP
    except ImportError:
        from transformers import CLIPImageProcessorPil as _IP
    return _IP(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_clip_from_scratch(size: str, texts: Iterable[str], vocab_size: int = 2000,
                            max_text_length: Optional[int] = None, image_size: Optional[int] = None,
                            seed: Optional[int] = None):
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
        torch.manual_seed(seed)
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

    path = Path(str(model_name_or_path))
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


def text_max_length(model, tokenizer) -> int:
    """Tokens a text may hold: the model's text positions, or the tokenizer's limit when that is lower."""
    cfg = getattr(getattr(model, "config", None), "text_config", None)
    limits = [getattr(cfg, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(v) for v in limits if v and v < 10 ** 6]
    return min(limits) if limits else 77


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


class ClipEncoder:
    """A loaded CLIP-family model with its image processor and tokenizer, encoding PIL images and strings to
    normalised numpy embeddings with the functions above (the evaluator's and the tools' view of a CLIP)."""

    def __init__(self, model, image_processor, tokenizer, device=None, max_length: Optional[int] = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.base = getattr(model, "clip", model)
        self.max_length = int(max_length or text_max_length(self.base, tokenizer))
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

    def save_pretrained(self, save_directory, **kwargs) -> None:
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(out, **kwargs)
        cfg = dict(self.adapter.config_dict(), type="clip-adapter")
        (out / CLIP_ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter.state_dict().items()},
                  str(out / CLIP_ADAPTER_WEIGHTS))

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """(ClipWithAdapter, processor) from a dir written by save_pretrained (+ the processor beside it)."""
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
