"""What a training run writes besides checkpoints: the output-dir rules (ours or refused, stale files, the lock),
run_args.json, all_results.json, the model card and the Hub upload; the disk-full message of every save. The rules
are in docs/training.md ("Output dir")."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from sdx.redact import redact, redact_command
from sdx.report.markdown import md_cell

logger = logging.getLogger(__name__)

RUN_ARGS = "run_args.json"
RESULTS = "all_results.json"
LOCK_FILE = ".sdx.lock"
# files only a run of these trainers writes: a folder holding one is a run of ours
RUN_MARKERS = (RUN_ARGS, "sdx_run.json")
# everything a run writes (trainers, transformers' save_pretrained, peft), removed by --overwrite_output_dir
RUN_FILES = (RUN_ARGS, RESULTS, "sdx_run.json", "README.md", "config.json", "generation_config.json",
             "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
             "adapter_config.json", "adapter_model.safetensors", "clip_adapter_config.json",
             "clip_adapter.safetensors", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
             "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
             "chat_template.jinja", "per_class_test.json", "per_class_test.md", "confusion_matrix_test.png")
RUN_DIRS = ("checkpoints", "best", ".tmp-best", "logs", "lora")
# what a run that stopped before saving anything leaves: a retry may reuse such a folder without a flag
UNFINISHED_RUN = frozenset({RUN_ARGS, "logs"})
NOT_PUSHED = ("checkpoints/*", "best/*", "logs/*", LOCK_FILE)
DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "Disk quota exceeded")
# torch's zip writer reports a failed write without errno (e.g. "[enforce fail at inline_container.cc:672]")
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed")


def json_default(o: Any) -> Any:
    """`json.dumps` fallback: arrays and tensors as lists, anything else as its string."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


# ----------------------------------------------------------------------------------------------------------------
# The output folder: ours, empty, or refused
# ----------------------------------------------------------------------------------------------------------------


def folder_entries(out: Path, flag: str = "--output_dir") -> list[str]:
    """The names in `out` (sorted; the lock file left out); [] when it does not exist. A file is refused."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise NotADirectoryError(f"{flag} {out} exists and is not a folder")
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)


def refuse_foreign_folder(out: Path, markers: Sequence[str], *, flag: str = "--output_dir", tool: str = "run",
                          overwrite_flag: str | None = "--overwrite_output_dir") -> bool:
    """Whether `out` holds one of our outputs (any of `markers`); False for a new or empty folder. A non-empty folder
    without a marker is refused (FileExistsError naming what is there): its files are a user's, and nothing of ours
    may overwrite them, with or without the overwrite flag."""
    entries = folder_entries(out, flag)
    if not entries:
        return False
    if any((out / m).exists() for m in markers):
        return True
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    also = f" ({overwrite_flag} replaces only an earlier {tool} of these tools, never other files)" \
        if overwrite_flag else ""
    raise FileExistsError(f"{flag} {out} is not empty and holds no {tool} of these tools ({shown}): refused so that "
                          f"none of its files is overwritten; choose a new or empty folder{also}")


def check_output_dir(training) -> Path:
    """Refuse an output dir that is not ours, or that holds a run to keep (docs/training.md), before any work.

    Accepted: a new or empty folder; a run of ours with --resume_from_checkpoint or --overwrite_output_dir; a run of
    ours that stopped before saving anything (only run_args.json and logs/). Safe to call on every process before
    the main process writes anything. Returns the path.
    """
    out = Path(training.output_dir)
    if not refuse_foreign_folder(out, RUN_MARKERS, tool="run"):
        return out
    if training.resume_from_checkpoint or training.overwrite_output_dir:
        return out
    found = folder_entries(out)
    if set(found) <= UNFINISHED_RUN:
        logger.warning("--output_dir %s holds a run that stopped before saving anything (%s): it is replaced",
                       out, ", ".join(found))
        return out
    raise FileExistsError(f"--output_dir {out} already holds a run ({', '.join(found[:8])}); pass "
                          f"--overwrite_output_dir to replace it, --resume_from_checkpoint to continue it, or choose "
                          f"another folder")


def remove_run_files(out: Path) -> tuple[list[str], list[str]]:
    """Delete what a previous run of ours wrote in `out` (RUN_FILES, RUN_DIRS); returns (removed, kept): the names
    removed and the entries left because no run of ours writes them (a user's files, never deleted)."""
    removed = []
    for pattern in RUN_FILES:
        for f in out.glob(pattern):
            if f.is_file() or f.is_symlink():
                f.unlink()
                removed.append(f.name)
    for name in RUN_DIRS:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
            removed.append(name + "/")
    return sorted(removed), folder_entries(out)


def start_output_dir(training, accelerator, run_args: Mapping[str, Any]) -> Path:
    """Create the output dir on the main process; unless resuming, remove a previous run's files (so no stale
    tokenizer or adapter stays beside the new model); write run_args.json (redacted: sdx.redact)."""
    out = Path(training.output_dir)
    accelerator.wait_for_everyone()  # every rank has run check_output_dir on the untouched folder
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not training.resume_from_checkpoint:
            removed, kept = remove_run_files(out)
            if removed:
                logger.warning("--output_dir %s: removed the previous run's %s", out, ", ".join(removed))
            if kept:
                logger.warning("--output_dir %s: kept %s (not written by a run of these tools)", out, ", ".join(kept))
        with disk_full_named(out / RUN_ARGS, "run arguments"):
            (out / RUN_ARGS).write_text(json.dumps(redact(dict(run_args)), indent=2, sort_keys=True,
                                                   default=json_default) + "\n")
    accelerator.wait_for_everyone()
    return out


# ----------------------------------------------------------------------------------------------------------------
# One run per folder: the lock
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--output_dir") -> Iterator[Path]:
    """Hold ``out/.sdx.lock`` (an exclusive `fcntl.flock`) while the block runs; a second holder is refused with a
    RuntimeError naming the first (pid, host, start time). The kernel drops the lock when its process dies, so the
    file a crash leaves behind is not a stale lock: the next run takes it. Creates `out` when missing and removes
    it again when the block leaves it empty."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    handle = _acquire(path, flag, out)
    try:
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        handle.flush()
        yield out
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                path.unlink()
        handle.close()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: a run that wrote nothing leaves no folder


def _acquire(path: Path, flag: str, out: Path):
    """The open lock file, locked; retried when another process replaced the file between open and flock."""
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RuntimeError(f"{flag} {out} is in use by another run ({holder}; lock file {path}): two runs into "
                               "one folder would overwrite each other's files; wait for it or choose another folder"
                               ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


# ----------------------------------------------------------------------------------------------------------------
# Disk full
# ----------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def disk_full_named(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failed write for lack of space into ``OSError(ENOSPC)`` saying "disk full" and naming `path`; other
    errors pass unchanged."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - torch and safetensors report a full disk without OSError
        text = str(exc)
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in DISK_FULL_TEXTS):
            raise OSError(errno.ENOSPC, f"disk full: cannot write the {what} {path} ({text})") from exc
        if isinstance(exc, RuntimeError) and any(t in text for t in TORCH_WRITE_FAILURES):
            raise OSError(errno.ENOSPC, f"most likely disk full: writing the {what} {path} failed "
                                        f"({_free_space(path)} free there): {text}") from exc
        raise


def _free_space(path: str | os.PathLike) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**20:.0f} MiB"
    except OSError:
        return "unknown space"


# ----------------------------------------------------------------------------------------------------------------
# Results, model card, Hub
# ----------------------------------------------------------------------------------------------------------------


def write_all_results(output_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``all_results.json`` (sorted keys, indented). Returns its path."""
    path = Path(output_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=json_default) + "\n")
    return path


def scalars(d: Mapping[str, Any]) -> dict[str, float | int]:
    """The numeric (non-bool) entries of `d`: ints stay ints (counts such as num_samples), the rest floats;
    one-element tensors included."""
    out: dict[str, float | int] = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = v
        elif hasattr(v, "numel") and v.numel() == 1:
            out[k] = float(v.item())
    return out


def write_model_card(output_dir: str | os.PathLike, *, model_name: str, task: str, base_model: str | None,
                     init: str, dataset: Mapping[str, Any], metrics: Mapping[str, Any],
                     hyperparameters: Mapping[str, Any], command_line: str, tags: Sequence[str] = (),
                     extra_sections: Mapping[str, str] | None = None, library_name: str = "transformers") -> Path:
    """Write ``README.md`` as a `huggingface_hub.ModelCard`: YAML metadata (eval results as model-index), the
    evaluation table, the data and configuration, whether the weights started pretrained or random, the command.

    `dataset`: {"name", "config", "data_dir", "splits": {split: n}, ...}; `metrics`: {"test_accuracy": ...}
    (scalars become model-index entries); `init`: "pretrained" or "random".
    """
    scal = scalars(metrics)
    dataset_id = str(dataset.get("id", "Zhaosxian/SteelDefectX"))
    eval_results = [EvalResult(task_type=task, dataset_type=dataset_id, dataset_name=str(dataset.get("name",
                               "SteelDefectX")), dataset_config=str(dataset.get("config", "default")),
                               dataset_split=k.split("_", 1)[0] if "_" in k else None,
                               metric_type=k.split("_", 1)[-1], metric_name=k, metric_value=v)
                    for k, v in scal.items()]
    data = ModelCardData(model_name=model_name, library_name=library_name, tags=list(tags) + ["steeldefectx"],
                         base_model=base_model if (base_model and init == "pretrained") else None,
                         datasets=[dataset_id], eval_results=eval_results or None, pipeline_tag=task)
    rows = "\n".join(f"| {md_cell(k)} | {v:.4f} |" for k, v in scal.items()) or "| (none) | |"
    hp = "\n".join(f"| {md_cell(k)} | {md_cell(v)} |" for k, v in redact(dict(hyperparameters)).items())
    ds = "\n".join(f"- {k}: {v}" for k, v in dataset.items())
    init_text = (f"Fine-tuned from the pretrained weights `{base_model}`." if init == "pretrained"
                 else "Trained from a **random initialisation** (no pretrained weights).")
    body = [f"# {model_name}", "", f"{task} on SteelDefectX steel-surface defects. {init_text}", "",
            "## Evaluation", "", "| metric | value |", "|---|---|", rows, "", "## Data", "", ds, "",
            "## Training configuration", "", "| hyper-parameter | value |", "|---|---|", hp, "",
            "## Command", "", "```bash", redact_command(command_line), "```", ""]
    for title, text in (extra_sections or {}).items():
        body += [f"## {title}", "", text, ""]
    path = Path(output_dir) / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).save(str(path))
    return path


def push_output_dir(output_dir: str | os.PathLike, repo_id: str | None = None, *, token: str | None = None,
                    private: bool = False, commit_message: str = "Upload SteelDefectX model",
                    ignore_patterns: Sequence[str] = NOT_PUSHED):
    """Upload `output_dir` to the Hub model repo `repo_id` (default: the folder's name) via `HfApi`:
    create_repo(exist_ok=True) then upload_folder, without checkpoints, best/ and logs. Returns upload_folder's
    result."""
    repo_id = repo_id or Path(output_dir).resolve().name
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(output_dir),
                             commit_message=commit_message, ignore_patterns=list(ignore_patterns))


def text_budget_section(summary: Mapping[str, Any], lineage: Mapping[str, Any] | None = None) -> str:
    """The model card's "Text length" section: the token budget, where the text positions came from, and per text
    level the captions the budget truncated (a `sdx.models.clip.TruncationCounter` summary)."""
    lines = [f"Token budget: **{summary['max_length']}** tokens per text; the model has "
             f"{summary.get('text_positions') or 'an unknown number of'} text positions."]
    lineage = dict(lineage or {})
    if lineage.get("stretched"):
        st = lineage["stretched"]
        lines.append(f"Text positions stretched from {st['from']} to {st['to']} by Long-CLIP's rule (the first "
                     f"{st['keep']} kept as trained and held fixed while training, the rest interpolated).")
    if lineage.get("family"):
        lines.append(f"Model family: {lineage['family']}"
                     + (f" (converted from `{lineage['converted_from']}`)" if lineage.get("converted_from") else "")
                     + ".")
    lines += ["", "| texts | distinct | truncated | share | tokens lost, mean | tokens lost, max | longest (tokens) |",
              "|---|---|---|---|---|---|---|"]
    for level, s in summary["levels"].items():
        share = f"{100 * s['truncated_share']:.1f} %" + (" **(above the warning share)**" if s["warning"] else "")
        lines.append(f"| {level} | {s['texts']} | {s['truncated']} | {share} | {s['tokens_lost_mean']:.1f} | "
                     f"{s['tokens_lost_max']} | {s['longest']} |")
    warned = [level for level, s in summary["levels"].items() if s["warning"]]
    if warned:
        lines += ["", f"**Warning: more than {100 * summary['warning_share']:g} % of the texts of "
                      f"{', '.join(warned)} were cut at the budget; the model never saw their ends.**"]
    return "\n".join(lines)
