"""What a training run writes besides checkpoints: the output-dir rules, run_args.json, all_results.json, the model
card and the Hub upload."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

RUN_ARGS = "run_args.json"
RESULTS = "all_results.json"
RUN_MARKERS = (RUN_ARGS, RESULTS, "config.json", "model.safetensors", "adapter_config.json")
NOT_PUSHED = ("checkpoints/*", "best/*", "logs/*")


def json_default(o: Any) -> Any:
    """`json.dumps` fallback: arrays and tensors as lists, anything else as its string."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def check_output_dir(training) -> Path:
    """Refuse an output dir that already holds a run (docs/training.md), before any work. Returns the path.

    Safe to call on every process before the main process writes anything into the folder.
    """
    out = Path(training.output_dir)
    if not out.exists():
        return out
    if not out.is_dir():
        raise NotADirectoryError(f"--output_dir {out} exists and is not a folder")
    found = [m for m in RUN_MARKERS if (out / m).exists()]
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(ckpts.iterdir()):
        found.append("checkpoints/")
    if not found or training.resume_from_checkpoint or training.overwrite_output_dir:
        return out
    raise FileExistsError(f"--output_dir {out} already holds a run ({', '.join(found)}); pass "
                          f"--overwrite_output_dir to replace it, --resume_from_checkpoint to continue it, or choose "
                          f"another folder")


def start_output_dir(training, accelerator, run_args: Mapping[str, Any]) -> Path:
    """Create the output dir on the main process, clear our own leftovers when overwriting, write run_args.json."""
    out = Path(training.output_dir)
    accelerator.wait_for_everyone()  # every rank has run check_output_dir on the untouched folder
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if training.overwrite_output_dir and not training.resume_from_checkpoint:
            for sub in ("checkpoints", "best"):
                shutil.rmtree(out / sub, ignore_errors=True)
        (out / RUN_ARGS).write_text(json.dumps(dict(run_args), indent=2, sort_keys=True, default=json_default) + "\n")
    accelerator.wait_for_everyone()
    return out


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
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in scal.items()) or "| (none) | |"
    hp = "\n".join(f"| {k} | {v} |" for k, v in hyperparameters.items())
    ds = "\n".join(f"- {k}: {v}" for k, v in dataset.items())
    init_text = (f"Fine-tuned from the pretrained weights `{base_model}`." if init == "pretrained"
                 else "Trained from a **random initialisation** (no pretrained weights).")
    body = [f"# {model_name}", "", f"{task} on SteelDefectX steel-surface defects. {init_text}", "",
            "## Evaluation", "", "| metric | value |", "|---|---|", rows, "", "## Data", "", ds, "",
            "## Training configuration", "", "| hyper-parameter | value |", "|---|---|", hp, "",
            "## Command", "", "```bash", command_line, "```", ""]
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
