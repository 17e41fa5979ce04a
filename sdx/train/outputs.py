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

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub import constants as hub_constants

from sdx.data.naming import LICENCE_NOTE, is_hub_id
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


WEIGHTS_LICENCE_FILE = "LICENSE.md"


def card_licence(data: Mapping[str, Any], init: str, base_model: str | None) -> tuple[dict[str, str], str]:
    """(licence metadata, licence text) of trained weights. Everything is ours only for a random start on the
    synthetic data: "mit". Otherwise the Hub's "other", naming LICENSE.md, which says what is known: the code is
    MIT, the data's terms are its own (the SteelDefectX release states no global licence), a base keeps its own."""
    if data.get("synthetic") and init != "pretrained":
        return {"license": "mit"}, ("MIT: the code (the SteelDefectX workbench) and the data (drawn by its synthetic "
                                    "generator) are MIT, and the weights started from a random initialisation.")
    if data.get("kind") in ("hub release", "raw folder"):
        terms = LICENCE_NOTE
    else:
        terms = (f"Code: MIT. Data: `{data.get('label')}`, whose licence this card does not know: see that "
                 "dataset's own card before using these weights.")
    shown = base_model if is_hub_id(base_model) else f"a local folder `{Path(str(base_model)).name}`"  # no paths
    base = f" The weights started from {shown}, which keeps its own licence." if init == "pretrained" else ""
    return ({"license": "other", "license_name": "steeldefectx-weights", "license_link": WEIGHTS_LICENCE_FILE},
            terms + base)


def card_data_text(data: Mapping[str, Any]) -> str:
    """One phrase naming the data of a run; synthetic data is never called SteelDefectX."""
    if data.get("synthetic"):
        return ("the project's **SYNTHETIC** demo data (drawn by its generator: not SteelDefectX, not steel "
                "photographs; these numbers say nothing about SteelDefectX)")
    return {"hub release": f"SteelDefectX (the Hub release `{data.get('hub_id')}`)",
            "raw folder": f"SteelDefectX from a local folder in the official layout (`{data.get('label')}`)",
            "hub dataset": f"the Hub dataset `{data.get('hub_id')}`",
            }.get(str(data.get("kind")), f"the local dataset folder `{data.get('label')}`")


def write_model_card(output_dir: str | os.PathLike, *, model_name: str, task: str, base_model: str | None,
                     init: str, dataset: Mapping[str, Any], metrics: Mapping[str, Any],
                     hyperparameters: Mapping[str, Any], command_line: str, tags: Sequence[str] = (),
                     extra_sections: Mapping[str, str] | None = None, library_name: str | None = None,
                     text_levels: str = "") -> Path:
    """Write ``README.md`` as a `huggingface_hub.ModelCard` the Hub's metadata check accepts (docs/training.md,
    "Model card"): `license` (and LICENSE.md where it is "other"), `base_model` only for a Hub id, `library_name`
    (peft where the folder holds a peft adapter), `datasets` and model-index eval results only for data on the
    Hub, no sample counts among the metrics; the body names the data (synthetic flagged), the caption level and
    its fallbacks (`text_levels`), the initial weights, the configuration and the command.

    `dataset`: sdx.data.naming.describe_data's {"label", "hub_id", "synthetic", "kind"} plus any rows to show
    ("config", "splits", ...); `metrics`: {"test_accuracy": ...}; `init`: "pretrained" or "random".
    """
    out = Path(output_dir)
    scal = {k: v for k, v in scalars(metrics).items() if not k.endswith("num_samples")}
    hub_id = dataset.get("hub_id")
    on_hub_base = bool(base_model and init == "pretrained" and is_hub_id(base_model))
    eval_results = [EvalResult(task_type=task, dataset_type=hub_id, dataset_name=str(dataset.get("label")),
                               dataset_config=str(dataset.get("config") or "default"),
                               dataset_split=k.split("_", 1)[0] if "_" in k else None,
                               metric_type=k.split("_", 1)[-1], metric_name=k, metric_value=v)
                    for k, v in scal.items()] if hub_id else []
    licence, licence_text = card_licence(dataset, init, base_model)
    # library_name "": no library loads the folder alone (a CLIP-Adapter folder: sdx.models.clip.load_clip does)
    library = library_name if library_name is not None else (
        "peft" if (out / "adapter_config.json").is_file() else "transformers")
    data = ModelCardData(model_name=model_name, library_name=library or None, pipeline_tag=task,
                         tags=list(tags) + ["steeldefectx"] + (["synthetic-data"] if dataset.get("synthetic") else []),
                         base_model=base_model if on_hub_base else None, datasets=[hub_id] if hub_id else None,
                         eval_results=eval_results or None, **licence)
    body = _card_body(model_name, task, base_model, init, dataset, scal, hyperparameters, command_line,
                      extra_sections, text_levels, licence_text, on_hub_base)
    path = out / "README.md"
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)).save(str(path))
    if licence["license"] == "other":
        (out / WEIGHTS_LICENCE_FILE).write_text(f"# Licence of {model_name}\n\n{licence_text}\n", encoding="utf-8")
    return path


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


def _card_body(model_name, task, base_model, init, dataset, scal, hyperparameters, command_line, extra_sections,
               text_levels, licence_text, on_hub_base) -> list[str]:
    if init != "pretrained":
        init_text = ("Trained from a **random initialisation** (no pretrained weights)"
                     + (f", continued from `{Path(str(base_model)).name}`." if base_model else "."))
    elif on_hub_base:
        init_text = f"Fine-tuned from the pretrained weights `{base_model}`."
    else:
        init_text = (f"Fine-tuned from the pretrained weights of a local folder (`{Path(str(base_model)).name}`, "
                     "not on the Hub).")
    rows = "\n".join(f"| {md_cell(k)} | {v:.4f} |" for k, v in scal.items()) or "| (none) | |"
    hp = "\n".join(f"| {md_cell(k)} | {md_cell(v)} |" for k, v in redact(dict(hyperparameters)).items())
    shown = {k: v for k, v in dataset.items() if k not in ("label", "hub_id", "synthetic", "kind")}
    ds = "\n".join([f"- data: {card_data_text(dataset)}"] + [f"- {k}: {v}" for k, v in shown.items()])
    where = ("" if dataset.get("hub_id") else "\n\nThe data is not on the Hub, so the card's metadata names no "
             "dataset and holds no model-index entry; the table above is the evaluation.")
    body = [f"# {model_name}", "", f"{task} on {card_data_text(dataset)}. {init_text}", "",
            "## Evaluation", "", "| metric | value |", "|---|---|", rows + where, "", "## Data", "", ds, ""]
    if text_levels:
        body += ["## Text levels", "", text_levels, ""]
    body += ["## Training configuration", "", "| hyper-parameter | value |", "|---|---|", hp, "",
             "## Licence", "", licence_text, "", "## Command", "", "```bash", redact_command(command_line), "```", ""]
    for title, text in (extra_sections or {}).items():
        body += [f"## {title}", "", text, ""]
    return body


HUB_STRATEGIES = ("end", "every_save", "checkpoint")


class HubPush:
    """--push_to_hub as transformers' TrainingArguments does it (docs/training.md, "The Hub"): the token and the
    network are checked on every process before any work, the repo is created (or found) on the main process
    before the first step, and uploads follow --hub_strategy: `end` the output folder once at the end;
    `every_save` also the model as saved at each checkpoint; `checkpoint` also the checkpoint itself as
    ``last-checkpoint/`` (resumable). Checkpoints, best/ and logs are never uploaded with the folder."""

    def __init__(self, training, output_dir: Path):
        self.strategy, self.private = training.hub_strategy, training.hub_private
        self.out = Path(output_dir)
        self.repo_id = training.hub_model_id or self.out.resolve().name
        if hub_constants.is_offline_mode():
            raise RuntimeError("--push_to_hub: the Hub is unreachable by choice (HF_HUB_OFFLINE is set); unset it, "
                               "or drop --push_to_hub and upload the output folder later")
        self.token = training.hub_token or get_token()
        if not self.token:
            raise PermissionError("--push_to_hub needs a Hugging Face write token: pass --hub_token, set HF_TOKEN or "
                                  "run `hf auth login`")
        self.api = HfApi(token=self.token)
        self.url: str | None = None

    def create_repo(self) -> str:
        """Create the model repo, or check that this token can write to it (main process, before training)."""
        self.url = str(self.api.create_repo(repo_id=self.repo_id, repo_type="model", private=self.private,
                                            exist_ok=True))
        return self.url

    def upload_output_dir(self, message: str):
        return self.api.upload_folder(repo_id=self.repo_id, repo_type="model", folder_path=str(self.out),
                                      commit_message=message, ignore_patterns=list(NOT_PUSHED))

    def on_save(self, checkpoint: Path, step: int) -> None:
        """After a checkpoint was written (and, for every_save / checkpoint, the model saved in the output folder)."""
        if self.strategy == "end":
            return
        self.upload_output_dir(f"Training in progress, step {step}")
        if self.strategy == "checkpoint":
            self.api.upload_folder(repo_id=self.repo_id, repo_type="model", folder_path=str(checkpoint),
                                   path_in_repo="last-checkpoint", commit_message=f"Checkpoint at step {step}")

    def at_end(self):
        return self.upload_output_dir("End of training")
