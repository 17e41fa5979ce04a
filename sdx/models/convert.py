"""convert-clip: a CLIP checkpoint in the OpenAI state-dict layout (OpenAI CLIP, Long-CLIP's .pt files) to a
transformers CLIP folder with its processor, usable by every tool here and by stock transformers.

    python -m sdx convert-clip longclip-L.pt outputs/longclip-L --tokenizer path/to/clip-tokenizer

The architecture (widths, layers, patch and image size, text positions, vocabulary, embedding size) is read off
the tensor shapes; head counts follow OpenAI's rule (width / 64) unless given. Long-CLIP's two position tables
become one (rows < 20 from ``positional_embedding``, the rest from ``positional_embedding_res``). Rules, the
tokenizer requirement and the checks: docs/long_captions.md ("Converting a checkpoint").
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from sdx.models.clip import KEEP_POSITIONS, LONG_CLIP, _clip_image_processor, text_positions, update_lineage

HEAD_WIDTH = 64                    # OpenAI CLIP: heads = width / 64 (the layout stores no head count)
DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size", "mask1", "mask2")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def load_state_dict(src: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``src`` (.safetensors, or a torch file read with ``weights_only=True`` only): a pickle that
    needs code to load is refused. A {"state_dict": ...} wrapper and "module." prefixes are unwrapped."""
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
            raise ValueError(
                f"{path}: refused: not loadable with torch.load(weights_only=True) (it needs code to unpickle, or is "
                f"a TorchScript archive). Only plain state dicts of tensors are read; re-save it where you trust "
                f"it with torch.save(model.state_dict(), ...). Loader said: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a non-empty dict of tensors, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def _need(state: dict, key: str, src: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{src}: key {key!r} missing: not a CLIP checkpoint in the OpenAI layout")
    return state[key]


def _layers(state: dict, prefix: str) -> int:
    ids = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
    return len(ids)


def _heads(width: int, given: Optional[int], tower: str) -> int:
    heads = given or width // HEAD_WIDTH
    if heads < 1 or width % heads:
        raise ValueError(f"{tower} width {width}: {heads} heads do not divide it (OpenAI's rule is width / "
                         f"{HEAD_WIDTH}); give --{tower}_heads")
    return heads


def text_position_table(state: dict[str, torch.Tensor], keep: int = KEEP_POSITIONS) -> tuple[torch.Tensor, bool]:
    """(the one text position table, whether it came from Long-CLIP's two tables): pe * mask1 + pe_res * mask2,
    i.e. rows < ``keep`` of ``positional_embedding`` and the rest of ``positional_embedding_res``."""
    pe = state["positional_embedding"]
    res = state.get("positional_embedding_res")
    if res is None:
        return pe, False
    if res.shape != pe.shape:
        raise ValueError(f"positional_embedding {tuple(pe.shape)} and positional_embedding_res {tuple(res.shape)} "
                         "differ in shape")
    return torch.cat([pe[:keep], res[keep:]]), True


def infer_config(state: dict[str, torch.Tensor], src: str = "checkpoint", vision_heads: Optional[int] = None,
                 text_heads: Optional[int] = None) -> dict[str, Any]:
    """CLIPConfig keyword arguments read off the OpenAI-layout shapes."""
    if "visual.proj" not in state:
        hint = " (a ResNet image tower: transformers' CLIP has ViT towers only)" if any(
            k.startswith("visual.layer1.") for k in state) else ""
        raise ValueError(f"{src}: key 'visual.proj' missing: not a ViT CLIP in the OpenAI layout{hint}")
    conv = _need(state, "visual.conv1.weight", src)
    vwidth, patch = conv.shape[0], conv.shape[-1]
    grid = round((_need(state, "visual.positional_embedding", src).shape[0] - 1) ** 0.5)
    twidth = _need(state, "ln_final.weight", src).shape[0]
    vlayers, tlayers = _layers(state, "visual.transformer.resblocks."), _layers(state, "transformer.resblocks.")
    text = dict(hidden_size=twidth, num_hidden_layers=tlayers, num_attention_heads=_heads(twidth, text_heads, "text"),
                intermediate_size=_need(state, "transformer.resblocks.0.mlp.c_fc.weight", src).shape[0],
                vocab_size=_need(state, "token_embedding.weight", src).shape[0],
                max_position_embeddings=_need(state, "positional_embedding", src).shape[0], hidden_act="quick_gelu",
                layer_norm_eps=1e-5)
    vision = dict(hidden_size=vwidth, num_hidden_layers=vlayers,
                  num_attention_heads=_heads(vwidth, vision_heads, "vision"),
                  intermediate_size=_need(state, "visual.transformer.resblocks.0.mlp.c_fc.weight", src).shape[0],
                  image_size=grid * patch, patch_size=patch, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    return dict(text_config=text, vision_config=vision,
                projection_dim=_need(state, "text_projection", src).shape[1])


def _block(state: dict, src: str, dst: str) -> dict[str, torch.Tensor]:
    """One residual attention block: the fused in_proj split into q/k/v, the rest renamed."""
    out = {}
    w, b = state[f"{src}.attn.in_proj_weight"], state[f"{src}.attn.in_proj_bias"]
    for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w.chunk(3), b.chunk(3)):
        out[f"{dst}.self_attn.{name}.weight"], out[f"{dst}.self_attn.{name}.bias"] = wi, bi
    for a, h in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
        out[f"{dst}.{h}.weight"], out[f"{dst}.{h}.bias"] = state[f"{src}.{a}.weight"], state[f"{src}.{a}.bias"]
    return out


def convert_state_dict(state: dict[str, torch.Tensor], n_text: int, n_vision: int) -> dict[str, torch.Tensor]:
    """OpenAI-layout tensors -> transformers CLIPModel state dict (float32)."""
    out = {"vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
           "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
           "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
           "visual_projection.weight": state["visual.proj"].t(),
           "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": text_position_table(state)[0],
           "text_projection.weight": state["text_projection"].t(),
           "logit_scale": state["logit_scale"]}
    for a, h in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):
        out[f"{h}.weight"], out[f"{h}.bias"] = state[f"{a}.weight"], state[f"{a}.bias"]
    for i in range(n_vision):
        out.update(_block(state, f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}"))
    for i in range(n_text):
        out.update(_block(state, f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}"))
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def find_tokenizer(src: Path, tokenizer_dir: Optional[str]):
    """The CLIP tokenizer: from ``--tokenizer DIR``, else from tokenizer files saved beside SRC."""
    from transformers import AutoTokenizer

    folder = Path(tokenizer_dir) if tokenizer_dir else src.parent
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        where = f"--tokenizer {folder}" if tokenizer_dir else f"beside {src} (in {folder})"
        raise FileNotFoundError(
            f"no CLIP tokenizer {where}: an OpenAI-layout checkpoint holds no vocabulary. Give --tokenizer DIR, a "
            f"folder with the CLIP BPE the checkpoint was trained with ({' or '.join(TOKENIZER_FILES)} + "
            "merges.txt, e.g. a saved openai/clip-vit-large-patch14 tokenizer; Long-CLIP uses OpenAI's), or put "
            "those files beside the checkpoint")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder}: cannot load a tokenizer ({err})") from err


def check_tokenizer(tokenizer, vocab_size: int, src: str) -> None:
    """The tokenizer must be the checkpoint's: as many tokens as its embedding rows, end-of-text the highest id
    (OpenAI's text tower pools at the highest token id)."""
    if len(tokenizer) != vocab_size:
        raise ValueError(f"{src}: the token embedding has {vocab_size} rows but the tokenizer has {len(tokenizer)} "
                         "tokens: not this checkpoint's tokenizer")
    if tokenizer.eos_token_id != vocab_size - 1:
        raise ValueError(f"{src}: the tokenizer's end-of-text id is {tokenizer.eos_token_id}, not the highest id "
                         f"{vocab_size - 1}; the OpenAI layout pools at the highest token id")


def convert_clip(src: str | Path, out: str | Path, tokenizer_dir: Optional[str] = None,
                 family: Optional[str] = None, vision_heads: Optional[int] = None,
                 text_heads: Optional[int] = None) -> Path:
    """Write a transformers CLIP folder (model, CLIPProcessor, tokenizer model_max_length = text positions) for an
    OpenAI-layout checkpoint. ``family`` defaults to Long-CLIP when the checkpoint has Long-CLIP's two position
    tables. Returns the output folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    src, out = Path(src), Path(out)
    refuse_nonempty(out)
    state = load_state_dict(src)
    state = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    kwargs = infer_config(state, str(src), vision_heads, text_heads)
    tokenizer = find_tokenizer(src, tokenizer_dir)
    check_tokenizer(tokenizer, kwargs["text_config"]["vocab_size"], str(src))
    kwargs["text_config"].update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    model = CLIPModel(CLIPConfig(**kwargs))
    converted = convert_state_dict(state, kwargs["text_config"]["num_hidden_layers"],
                                   kwargs["vision_config"]["num_hidden_layers"])
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{src}: tensors do not map onto CLIP (missing {missing[:5]}, unexpected {unexpected[:5]})")
    two_tables = text_position_table(state)[1]
    update_lineage(model, family=family or (LONG_CLIP if two_tables else None), converted_from=src.name,
                   source_layout="openai-state-dict" + (" (Long-CLIP two position tables)" if two_tables else ""))
    positions = text_positions(model)
    tokenizer.model_max_length = positions
    processor = CLIPProcessor(image_processor=_clip_image_processor(kwargs["vision_config"]["image_size"]),
                              tokenizer=tokenizer)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out


def refuse_nonempty(out: Path) -> None:
    """The output folder must be new or empty: a conversion never writes over a user's files (config.json,
    tokenizer files, a README of the same names)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        names = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else []
        raise FileExistsError(f"{out} is not empty ({', '.join(names) or 'a file'}): convert-clip writes into a new "
                              "or empty folder only; name another one or empty it")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdx convert-clip", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint in the OpenAI CLIP layout (.pt / .pth state dict, or .safetensors)")
    p.add_argument("out", help="output folder, new or empty (transformers CLIP + processor)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="folder with the checkpoint's CLIP tokenizer (default: tokenizer files beside SRC)")
    p.add_argument("--family", default=None,
                   help=f"model family recorded in config.json's sdx_lineage (default: {LONG_CLIP} when the "
                        "checkpoint has Long-CLIP's two position tables, else none)")
    p.add_argument("--vision_heads", type=int, default=None, help="vision attention heads (default width / 64)")
    p.add_argument("--text_heads", type=int, default=None, help="text attention heads (default width / 64)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """``python -m sdx convert-clip SRC OUT``: convert, then print what was written."""
    args = build_parser().parse_args(argv)
    try:
        out = convert_clip(args.src, args.out, args.tokenizer, args.family, args.vision_heads, args.text_heads)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        if argv is not None:
            raise
        raise SystemExit(f"convert-clip: error: {err}") from None
    positions = json.loads((out / "config.json").read_text())["text_config"]["max_position_embeddings"]
    print(f"wrote {out}: a transformers CLIP folder, {positions} text positions, tokenizer model_max_length "
          f"{positions}")
    return out
