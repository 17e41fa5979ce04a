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

DATA_CLI_MODULES = ("sdx.data.builder", "sdx.annotate.engine", "sdx.data.synthetic")
# python -m sdx COMMAND: the tools that have their own parser, by module (each has main(argv))
TOOLS = {"train-vit": "sdx.train.vit", "train-clip": "sdx.train.clip", "eval": "sdx.bench.cli",
         "pipeline": "sdx.pipeline"}
DATA_DESCRIPTION = """SteelDefectX data tools.

    steeldefectx stats    --data_dir D
    steeldefectx export   OUT --data_dir D               # parquet + card for datasets.load_dataset(OUT, cfg)
    steeldefectx push     REPO_ID --data_dir D
    steeldefectx annotate --image_dir I --mask_dir M --output records.json
    steeldefectx verify   --data_dir D
    steeldefectx generate OUT                            # the embedded synthetic dataset

(``python steeldefectx.py ...`` and ``python -m sdx ...`` take the same commands.)"""


def build_data_parser(prog: str = "steeldefectx") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DATA_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in DATA_CLI_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def data_main(argv: Sequence[str] | None = None, prog: str = "steeldefectx") -> Any:
    """The data tools; bad input ends the process with one line naming the file and the field."""
    from sdx.data.layout import DataError, DataSourceError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_data_parser(prog).parse_args(argv)
    try:
        return args.func(args)
    except (DataError, DataSourceError, ValueError, PermissionError) as error:
        if argv is not None:  # called from Python: let the caller see the exception
            raise
        sys.exit(f"error: {error}")


def main(argv: Sequence[str] | None = None) -> Any:
    """``python -m sdx COMMAND ...``: the data commands, or one of TOOLS with its own arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m sdx COMMAND ...\n\ntools: {', '.join(TOOLS)} (each with --help)\n")
        build_data_parser("python -m sdx").print_help()
        return None
    return data_main(argv, prog="python -m sdx")
