"""Resumable checkpoints (``output_dir/checkpoints/checkpoint_<i>``) and the best-epoch weights (``output_dir/best``)
of the training loop; the rules are in docs/training.md ("Checkpoints and resume")."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_file

from sdx.train.outputs import json_default

TRAINING_STATE = "training_state.json"
BEST_RECORD = "best_record.json"


def checkpoint_index(path: Path) -> int | None:
    m = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``output_dir/checkpoints/checkpoint_<i>`` folders, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(i, p) for p in root.iterdir() if p.is_dir() and (i := checkpoint_index(p)) is not None]
    return [p for _, p in sorted(found)]


def next_checkpoint_index(output_dir: str | os.PathLike) -> int:
    """The index the next automatically named checkpoint must take: past every existing ``checkpoint_<i>``
    (accelerate's counter starts at `ProjectConfiguration.iteration`, and `save_state` refuses an existing name)."""
    existing = [checkpoint_index(p) for p in list_checkpoints(output_dir)]
    return max(existing) + 1 if existing else 0


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder to resume from, validated (exists, has training_state.json); None when not resuming.

    Raises FileNotFoundError / ValueError naming the path. Call it early (before loading data) to fail fast.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint_<i> folder under "
                                    f"{Path(output_dir) / 'checkpoints'}")
        path = ckpts[-1]
    else:
        path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder not found: {path}")
    state = path / TRAINING_STATE
    if not state.is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint: {path} is not a checkpoint of this trainer "
                                f"({state} is missing)")
    try:
        int(json.loads(state.read_text())["completed_steps"])
    except Exception as exc:  # noqa: BLE001 - name the file
        raise ValueError(f"--resume_from_checkpoint: corrupt {state}: {exc}") from exc
    return path


def save_checkpoint(accelerator, state: dict[str, Any]) -> Path:
    """`Accelerator.save_state` (model, optimizer, scheduler, sampler, RNG) plus the loop's training_state.json."""
    path = Path(accelerator.save_state())
    if accelerator.is_main_process:
        (path / TRAINING_STATE).write_text(json.dumps(state, indent=2, default=json_default) + "\n")
    accelerator.wait_for_everyone()
    return path


def load_training_state(accelerator, path: Path) -> dict[str, Any]:
    """Load a checkpoint into the prepared objects; returns its training_state.json."""
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - name the checkpoint
        raise ValueError(f"--resume_from_checkpoint: cannot load {path}: {exc}") from exc
    return json.loads((path / TRAINING_STATE).read_text())


def read_best_record(best_dir: Path) -> dict | None:
    try:
        return json.loads((best_dir / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None


def save_best(accelerator, model: torch.nn.Module, best_dir: Path, record: dict[str, Any]) -> None:
    """Write the best weights (`Accelerator.save_model`) and their record (epoch, step, metric)."""
    accelerator.wait_for_everyone()
    accelerator.save_model(model, str(best_dir))
    if accelerator.is_main_process:
        best_dir.mkdir(parents=True, exist_ok=True)
        (best_dir / BEST_RECORD).write_text(json.dumps(record) + "\n")
    accelerator.wait_for_everyone()


def load_best(accelerator, model: torch.nn.Module, best_dir: str | os.PathLike) -> torch.nn.Module:
    """Load the weights kept in `best_dir` into `model` (prepared or not). Returns the unwrapped model."""
    unwrapped = accelerator.unwrap_model(model)
    best = Path(best_dir)
    files = sorted(best.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors in {best}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = unwrapped.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{best}: weights not in the model: {unexpected[:5]}")
    # keys missing from the file are tied/shared tensors that save_model de-duplicated; check they are covered
    own = unwrapped.state_dict()
    stored_ptrs = {own[k].data_ptr() for k in state if k in own}
    uncovered = [k for k in missing if own[k].data_ptr() not in stored_ptrs]
    if uncovered:
        raise ValueError(f"{best}: weights missing for {uncovered[:5]}")
    return unwrapped


# ----------------------------------------------------------------------------------------------------------------
# RNG states across a mid-epoch resume
# ----------------------------------------------------------------------------------------------------------------


def get_rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def set_rng_states(states: tuple) -> None:
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])
    if states[3] is not None:
        torch.cuda.set_rng_state_all(states[3])


def restore_rng_on_first_batch(loader: Iterable, states: tuple):
    """Yield from `loader`, re-applying the checkpoint's RNG states once its first batch is out.

    Starting a DataLoader iterator draws a base seed from the global RNG; the uninterrupted run drew it at the start
    of the epoch, before the checkpoint, so the resumed run must not let that draw shift the stream.
    """
    first = True
    for batch in loader:
        if first:
            set_rng_states(states)
            first = False
        yield batch
