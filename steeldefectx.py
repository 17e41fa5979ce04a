"""SteelDefectX dataset builder and data tools.

    from steeldefectx import load_steeldefectx
    ds = load_steeldefectx("path/to/SteelDefectX", "fine")        # or "synthetic", or None for the Hub

    python steeldefectx.py stats    --data_dir D
    python steeldefectx.py export   OUT --data_dir D               # parquet + card for datasets.load_dataset(OUT, cfg)
    python steeldefectx.py push     REPO_ID --data_dir D
    python steeldefectx.py annotate --image_dir I --mask_dir M --output records.json
    python steeldefectx.py verify   --data_dir D
    python steeldefectx.py generate OUT                            # the embedded synthetic dataset
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from sdx.data.builder import (  # noqa: F401  (re-exported: the builder lives in the package)
    DataError,
    DataSourceError,
    SteelDefectX,
    SteelDefectXConfig,
    build_report,
    class_names,
    class_texts,
    load_steeldefectx,
)

CLI_MODULES = ("sdx.data.builder", "sdx.annotate.engine", "sdx.data.synthetic")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steeldefectx.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in CLI_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "register_cli"):
            module.register_cli(sub)
    return parser


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    try:
        main()
    except (DataError, DataSourceError, ValueError, PermissionError) as error:
        sys.exit(f"error: {error}")
