"""Command lines: ``steeldefectx`` (the data tools) and ``python -m sdx COMMAND`` (every tool of the project).

The entry points at the repository's top level (steeldefectx.py, train_vit.py, train_clip.py, eval_benchmark.py)
and the console scripts of pyproject.toml call these functions.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Sequence

from sdx.data.layout import DataError, DataSourceError

DATA_CLI_MODULES = ("sdx.data.builder", "sdx.data.export", "sdx.annotate.folder", "sdx.annotate.describe",
                    "sdx.data.synthetic")
# python -m sdx COMMAND: the tools that have their own parser, by module (each has main(argv))
TOOLS = {"train-vit": "sdx.train.vit", "train-clip": "sdx.train.clip", "eval": "sdx.bench.cli",
         "pipeline": "sdx.pipeline"}
TOOLS["convert-clip"] = "sdx.models.convert"   # OpenAI-layout CLIP (Long-CLIP .pt) -> transformers folder
DATA_DESCRIPTION = """SteelDefectX data tools.

    steeldefectx stats    [--data_dir D]                   # D: a folder, 'synthetic' (default) or 'hub'
    steeldefectx export   [OUT] [--data_dir D]             # OUT (default steeldefectx): load_dataset(OUT, cfg)
    steeldefectx push     REPO_ID --data_dir D             # then load_dataset(REPO_ID, cfg)
    steeldefectx card     --data_dir D                     # README card: load_dataset(D) gives images, not masks
    steeldefectx describe --image_dir I --output t2.json --api_base URL --model NAME   # T2 (or --no_model --mask_dir M)
    steeldefectx annotate --image_dir I --mask_dir M --output records.json [--descriptions t2.json] [--llm_fields]
    steeldefectx verify   --data_dir D
    steeldefectx generate OUT                              # the embedded synthetic dataset

(``python steeldefectx.py ...`` and ``python -m sdx ...`` take the same commands.)"""


def build_data_parser(prog: str = "steeldefectx") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DATA_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in DATA_CLI_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def data_main(argv: Sequence[str] | None = None, prog: str = "steeldefectx") -> Any:
    """The data tools; returns the command's result. From the command line (``argv`` None), bad input ends the
    process with one line naming the file and the field; called from Python, the exception is raised."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_data_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except (DataError, DataSourceError, ValueError, PermissionError) as error:
        if argv is not None:
            raise
        sys.exit(f"error: {error}")


def main(argv: Sequence[str] | None = None, prog: str = "python -m sdx") -> Any:
    """``python -m sdx COMMAND ...``: the data commands, or one of TOOLS with its own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return importlib.import_module(TOOLS[args[0]]).main(args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: {prog} COMMAND ...\n\ntools: {', '.join(TOOLS)} (each with --help)\n")
        build_data_parser(prog).print_help()
        return None
    return data_main(argv, prog=prog)


# Console scripts (pyproject.toml). They return None: a console script passes its function's return value to
# sys.exit, and a results dict there would print the dict and exit with status 1.
def sdx_script() -> None:
    """``sdx COMMAND ...``."""
    main(prog="sdx")


def steeldefectx_script() -> None:
    """``steeldefectx COMMAND ...``."""
    data_main()


def _tool_script(command: str) -> None:
    main([command, *sys.argv[1:]])


def train_vit_script() -> None:
    """``sdx-train-vit ...`` (as train_vit.py)."""
    _tool_script("train-vit")


def train_clip_script() -> None:
    """``sdx-train-clip ...`` (as train_clip.py)."""
    _tool_script("train-clip")


def eval_script() -> None:
    """``sdx-eval ...`` (as eval_benchmark.py)."""
    _tool_script("eval")


def pipeline_script() -> None:
    """``sdx-pipeline ...`` (as python -m sdx pipeline)."""
    _tool_script("pipeline")
