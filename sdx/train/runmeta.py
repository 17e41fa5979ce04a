"""The run-metadata record: what a trainer writes beside its model and the evaluator reads back.

One typed record (`RunMetadata`, file ``sdx_run.json``) replaces loose keys: the trainers build it from their
arguments, the evaluator reads the origin, method, caption level and seen classes from it. ``version`` is
bumped when a field changes meaning; a reader refuses a newer version than it knows.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

RUN_META_FILE = "sdx_run.json"
RUN_META_VERSION = 1


@dataclass
class RunMetadata:
    """What a saved run is: kind of model, where its weights started, how and on what it was trained."""

    kind: str                                   # "image-classifier" or "clip"
    origin: str                                 # weights_origin(): "random-init", "random-init (from <path>)",
    #                                             "pretrained:<Hub id or path>" (+ " (from <path>)" when carried)
    method: str                                 # full, lora, adapter
    seed: int
    data: str                                   # the data the run read (a folder, "synthetic", a Hub id)
    synthetic: bool = False                     # the data was the embedded synthetic generator's
    dataset_config: Optional[str] = None
    caption_level: Optional[str] = None         # CLIP: t0..t4 or "mixed"
    loss: Optional[str] = None
    train_classes: list[str] = field(default_factory=list)
    exclude_classes: list[str] = field(default_factory=list)
    select_metric: Optional[str] = None         # the validation metric that picked the saved epoch
    select_rule: Optional[str] = None           # that metric in words (prompts, level, data it is measured on)
    caption_levels_used: dict[str, float] = field(default_factory=dict)  # CLIP: share of the training captions
    #                                             per level actually used (fallbacks included): {"t4": 0.57, "t1": 0.43}
    details: dict[str, Any] = field(default_factory=dict)   # method specifics (LoRA towers, frozen towers, ...)
    # rows per text level and where the training captions came from (sdx.data.source.text_level_report)
    text_levels: dict[str, Any] = field(default_factory=dict)
    version: int = RUN_META_VERSION

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / RUN_META_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> Optional["RunMetadata"]:
        """The record in ``folder``, or None when the folder has none (a checkpoint not written here)."""
        path = Path(folder) / RUN_META_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
        version = data.get("version")
        if not isinstance(version, int) or version > RUN_META_VERSION:
            raise ValueError(f"{path}: field 'version': {version!r} is not a version this code reads "
                             f"(at most {RUN_META_VERSION}); update the project")
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in data]
        if missing:
            raise ValueError(f"{path}: field '{missing[0]}': missing")
        return cls(**{k: v for k, v in data.items() if k in known})


def weights_origin(model_name_or_path: str | None) -> str:
    """Where a run's starting weights come from, the one rule of both trainers.

    No path: "random-init". A folder with our run metadata carries that run's origin with the folder named
    ("random-init (from runs/a)", "pretrained:openai/clip-vit-base-patch16 (from runs/b)"). Anything else, a Hub
    id or a folder without our metadata, holds pretrained weights: "pretrained:<id or path>".
    """
    if not model_name_or_path:
        return "random-init"
    run = RunMetadata.read(model_name_or_path) if Path(model_name_or_path).is_dir() else None
    if run is None:
        return f"pretrained:{model_name_or_path}"
    carried = run.origin.split(" (from ", 1)[0]
    return f"{carried} (from {model_name_or_path})"


def is_pretrained(origin: str) -> bool:
    """Whether weights of this origin (`weights_origin`) come from pretraining."""
    return origin.startswith("pretrained:")
