"""Resumable checkpoints (``output_dir/checkpoints/checkpoint_<i>``, written whole or not at all) and the best-epoch
weights (``output_dir/best``) of the training loop; the rules are in docs/training.md ("Checkpoints and resume")."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from accelerate.utils import load

from sdx.train.outputs import disk_full_named, json_default

TRAINING_STATE = "training_state.json"
BEST_RECORD = "best_record.json"
TMP_PREFIX = ".tmp-"  # a checkpoint being written: renamed to checkpoint_<i> once complete
# the settings that fix which examples each step sees: a resume must not change them
ORDER_SETTINGS = ("per_device_train_batch_size", "num_processes", "gradient_accumulation_steps", "seed",
                  "train_examples", "data_fingerprint", "sampler")
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")

logger = logging.getLogger(__name__)


def checkpoint_index(path: Path) -> int | None:
    m = re.fullmatch(r"checkpoint_(\d+)", path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """``output_dir/checkpoints/checkpoint_<i>`` folders, oldest first (complete or not; temporary ones left out)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(i, p) for p in root.iterdir() if p.is_dir() and (i := checkpoint_index(p)) is not None]
    return [p for _, p in sorted(found)]


def next_checkpoint_index(output_dir: str | os.PathLike) -> int:
    """The index the next checkpoint takes: past every existing ``checkpoint_<i>``."""
    existing = [checkpoint_index(p) for p in list_checkpoints(output_dir)]
    return max(existing) + 1 if existing else 0


def incomplete_reason(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint (None when it is): training_state.json missing or unreadable, or a
    file of its manifest missing or of another size (a save cut short by a kill or a full disk)."""
    state = path / TRAINING_STATE
    if not state.is_file():
        return f"{TRAINING_STATE} is missing"
    try:
        saved = json.loads(state.read_text())
        int(saved["completed_steps"])
    except Exception as exc:  # noqa: BLE001 - any damage makes the checkpoint unusable; say which
        return f"{TRAINING_STATE} is unreadable ({exc})"
    for name, size in (saved.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
    return None


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike,
                       warn: bool = True) -> Path | None:
    """The checkpoint folder to resume from, checked complete; None when not resuming. ``latest`` is the newest
    complete ``checkpoint_<i>``; the incomplete ones skipped are named in a warning.

    Raises FileNotFoundError / ValueError naming the path. Call it early (before loading data) to fail fast.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        return _latest_complete(output_dir, warn)
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder not found: {path}")
    reason = incomplete_reason(path)
    if reason and not (path / TRAINING_STATE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint: {path} is not a checkpoint of this trainer "
                                f"({path / TRAINING_STATE} is missing)")
    if reason:
        raise ValueError(f"--resume_from_checkpoint: {path} is incomplete or damaged: {reason}")
    return path


def _latest_complete(output_dir: str | os.PathLike, warn: bool) -> Path:
    ckpts = list_checkpoints(output_dir)
    if not ckpts:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint_<i> folder under "
                                f"{Path(output_dir) / 'checkpoints'}")
    skipped = []
    for path in reversed(ckpts):
        reason = incomplete_reason(path)
        if reason is None:
            if skipped and warn:
                logger.warning("--resume_from_checkpoint latest: took %s, skipped the incomplete %s", path.name,
                               "; ".join(f"{p} ({r})" for p, r in skipped))
            return path
        skipped.append((path, reason))
    raise FileNotFoundError("--resume_from_checkpoint latest: no complete checkpoint: "
                            + "; ".join(f"{p} ({r})" for p, r in skipped))


def save_checkpoint(accelerator, output_dir: str | os.PathLike, index: int, state: dict[str, Any],
                    total_limit: int | None = None) -> Path:
    """Write ``checkpoint_<index>`` whole or not at all: `Accelerator.save_state` (model, optimizer, scheduler,
    sampler, RNG) and training_state.json (with the manifest of file sizes, written last) go to a temporary folder
    renamed when complete; only then are checkpoints beyond `total_limit` (oldest first) deleted. A full disk
    raises OSError(ENOSPC) naming the folder."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"checkpoint_{index}", root / f"{TMP_PREFIX}checkpoint_{index}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(f"{TMP_PREFIX}*"):  # saves cut short earlier
            shutil.rmtree(leftover, ignore_errors=True)
        if final.exists():
            raise FileExistsError(f"checkpoint folder {final} already exists")
    accelerator.wait_for_everyone()
    try:
        with disk_full_named(final, "checkpoint"):
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                files = {f.relative_to(tmp).as_posix(): _synced_size(f) for f in sorted(tmp.rglob("*"))
                         if f.is_file()}
                _write_synced(tmp / TRAINING_STATE, json.dumps({**state, "files": files}, indent=2,
                                                               default=json_default) + "\n")
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space a full disk needs back
        raise
    if accelerator.is_main_process:
        os.rename(tmp, final)
        _sync_dir(root)
        if total_limit:
            for old in [p for p in list_checkpoints(output_dir) if p != final][:-(total_limit - 1) or None]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _synced_size(path: Path) -> int:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return path.stat().st_size


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_order_settings(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse a resume whose data-order settings differ from the checkpoint's, naming each change."""
    recorded = saved.get("order_settings")
    if recorded is None:
        logger.warning("%s records no run settings (written by an older version): batch size, processes, "
                       "accumulation, seed and data are not checked", path)
        return
    changed = [f"{k} {recorded.get(k)!r} -> {current.get(k)!r}" for k in ORDER_SETTINGS
               if k in recorded and recorded.get(k) != current.get(k)]
    if changed:
        raise ValueError(f"--resume_from_checkpoint {path}: the run's settings differ from the checkpoint's ("
                         f"{'; '.join(changed)}); the resumed run would not see the data the interrupted one would "
                         f"have. Resume with the checkpoint's settings, or start a new run")


def read_training_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAINING_STATE).read_text())


def check_rng_file(path: Path, process_index: int) -> None:
    """Load and apply ``random_states_<process_index>.pkl`` (accelerate's RNG states; accelerate itself skips a bad
    one silently): a missing, truncated or foreign file raises ValueError naming it."""
    rng_file = path / f"random_states_{process_index}.pkl"
    if not rng_file.is_file():
        raise ValueError(f"--resume_from_checkpoint: {rng_file} is missing (a checkpoint of another number of "
                         "processes, or damaged)")
    try:
        states = load(rng_file)
        missing = [k for k in RNG_KEYS if k not in states]
        if missing:
            raise KeyError(f"no {missing}")
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe pickles all land here; name the file
        raise ValueError(f"--resume_from_checkpoint: {rng_file} holds no usable random states "
                         f"({type(exc).__name__}: {exc}); the checkpoint is damaged or not one of accelerate's"
                         ) from None


def load_training_state(accelerator, path: Path) -> dict[str, Any]:
    """Load a checkpoint into the prepared objects; returns its training_state.json."""
    check_rng_file(path, accelerator.process_index)
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - name the checkpoint
        raise ValueError(f"--resume_from_checkpoint: cannot load {path}: {exc}") from exc
    return read_training_state(path)


def read_best_record(best_dir: Path) -> dict | None:
    try:
        return json.loads((best_dir / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None


def save_best(accelerator, best_dir: Path, record: dict[str, Any]) -> None:
    """Keep the best epoch as an accelerate state (`Accelerator.save_state`: the engine's own format, gathered or
    sharded under FSDP and DeepSpeed alike) with its record (epoch, step, metric), written to a temporary folder
    that replaces `best_dir` once complete."""
    tmp = best_dir.with_name(TMP_PREFIX + best_dir.name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with disk_full_named(best_dir, "best weights"):
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_synced(tmp / BEST_RECORD, json.dumps(record) + "\n")
    if accelerator.is_main_process:
        shutil.rmtree(best_dir, ignore_errors=True)
        os.rename(tmp, best_dir)
    accelerator.wait_for_everyone()


def load_best(accelerator, best_dir: str | os.PathLike) -> None:
    """Load the state kept by `save_best` into the prepared model (and its optimizer), on every process
    (`Accelerator.load_state`): no direct access to the model's parameters, so sharded engines work."""
    best = Path(best_dir)
    if not (best / BEST_RECORD).is_file():
        raise FileNotFoundError(f"no {BEST_RECORD} in {best}: not a best state written by this trainer")
    accelerator.load_state(str(best))


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
