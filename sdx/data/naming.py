"""What names the data of a command line: the ``--dataset_name`` flags (a dataclass the trainers and the evaluator
share), the choice between ``--data_dir`` and ``--dataset_name``, and what a name is (a Hub id, a local folder,
synthetic data). Light on purpose (no `datasets` import): --help reads it. Loading: sdx.data.source."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from sdx.data import levels as T
from sdx.data.layout import HUB_REPO, data_source, is_synthetic_dir

logger = logging.getLogger(__name__)

UNKNOWN_LEVEL = "unknown"   # the level of a caption column nobody named
LICENCE_NOTE = ("Code: MIT. Data: the SteelDefectX release states no global licence; each image keeps the terms of "
                "its source set (NEU: academic use; X-SDD: Apache-2.0; GC10-DET and S3D: their own terms). Several "
                "users report the data as CC-BY-4.0; check the sources before commercial use.")


@dataclass(kw_only=True)
class DatasetArguments:
    """The flags that name a `datasets` dataset instead of a raw folder (shared by the trainers and the evaluator;
    keyword-only so a subclass may declare required fields first)."""

    dataset_name: Optional[str] = field(default=None, metadata={"help": (
        "a dataset load_dataset reads instead of --data_dir: a Hub id (e.g. me/steeldefectx after `steeldefectx "
        "push`), a local export (`steeldefectx export`), an imagefolder or parquet folder; giving both is an "
        "error")})
    image_column: str = field(default="image", metadata={"help": "--dataset_name: the image column"})
    label_column: str = field(default="label", metadata={"help": (
        "--dataset_name: the class column (ClassLabel, strings or integers)")})
    caption_column: Optional[str] = field(default=None, metadata={"help": (
        "--dataset_name: a caption column of a dataset without the level columns t0..t4 (default: `caption` when "
        "present); its level is --caption_column_level, else reported as unknown")})
    caption_column_level: Optional[str] = field(default=None, metadata={"help": (
        "--dataset_name: the text level the caption column holds (t1, t2 or t4; aliases accepted)")})
    mask_column: Optional[str] = field(default=None, metadata={"help": (
        "--dataset_name: a mask column (default: `mask` when present)")})
    train_split_name: str = field(default="train", metadata={"help": "--dataset_name: the training split"})
    validation_split_name: str = field(default="validation", metadata={"help": (
        "--dataset_name: the validation split; when the dataset has none it is carved from train (stratified, "
        "--validation_fraction, the builder's rule)")})
    test_split_name: str = field(default="test", metadata={"help": (
        "--dataset_name: the test split (optional)")})

    def __post_init__(self) -> None:
        if self.caption_column_level is not None:
            try:
                level = T.normalize_level(self.caption_column_level)
            except ValueError as err:
                raise ValueError(f"--caption_column_level: {err}") from None
            if level in ("t0", "t3"):
                raise ValueError(f"--caption_column_level {level}: T0 is built from the class name and T3 is "
                                 "structured; a caption column can hold t1, t2 or t4")
            self.caption_column_level = level


def choose_data(data_dir: Optional[str], dataset_name: Optional[str]) -> Optional[str]:
    """The effective --data_dir: refused beside --dataset_name, "synthetic" when neither is given."""
    if data_dir is not None and dataset_name is not None:
        raise ValueError(f"give --data_dir ({data_dir}) or --dataset_name ({dataset_name}), not both")
    return "synthetic" if data_dir is None and dataset_name is None else data_dir


# --------------------------------------------------------------------------------------------------------
# What a dataset name is

def is_hub_id(name: Optional[str]) -> bool:
    """True when `name` reads as a Hub repo id and names no local path (a local folder wins in load_dataset)."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # the Hub's own rule for ids

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def describe_data(data_dir: Optional[str], dataset_name: Optional[str] = None) -> dict[str, Any]:
    """What the data of a run is, for the run metadata, the model card and the report: a label, the Hub dataset id
    to name in a card (None for local or synthetic data), and whether it is the synthetic generator's."""
    if dataset_name:
        local = Path(dataset_name).expanduser()
        synthetic = is_synthetic_dir(local) if local.is_dir() else _hub_synthetic(dataset_name)
        hub_id = None if local.is_dir() or not is_hub_id(dataset_name) else dataset_name
        kind = "hub dataset" if hub_id else "local dataset folder"
        return {"label": dataset_name if hub_id else local.name, "hub_id": hub_id, "synthetic": synthetic,
                "kind": kind}
    kind = data_source(data_dir)
    synthetic = is_synthetic_dir(data_dir)
    hub_id = HUB_REPO if kind == "hub" else None
    label = {"hub": HUB_REPO, "synthetic": "synthetic"}.get(kind, Path(str(data_dir)).name)
    return {"label": label, "hub_id": hub_id, "synthetic": synthetic,
            "kind": "synthetic generator" if synthetic else {"hub": "hub release", "local": "raw folder"}[kind]}


def _hub_synthetic(repo_id: str) -> bool:
    """An export of the synthetic data carries SYNTHETIC.md (sdx.data.export); asked of the Hub, False offline."""
    try:
        from huggingface_hub import HfApi

        return bool(HfApi().file_exists(repo_id, "SYNTHETIC.md", repo_type="dataset"))
    except Exception as err:  # noqa: BLE001 - offline or no such repo: the card then names the id only
        logger.info("cannot ask the Hub whether %s is synthetic (%s)", repo_id, err)
        return False
