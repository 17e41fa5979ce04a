"""SteelDefectX dataset builder and data tools.

    from steeldefectx import load_steeldefectx
    ds = load_steeldefectx("path/to/SteelDefectX", "fine")        # or "synthetic", or None for the Hub

    python steeldefectx.py {stats,export,push,annotate,verify,generate} ...   (--help lists them)

The builder lives in sdx.data.builder; this file re-exports its public names and runs the data tools.
"""

from __future__ import annotations

from sdx.cli import data_main
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



def main(argv=None):
    """The data tools (``python steeldefectx.py --help``); returns the command's result."""
    return data_main(argv, prog="steeldefectx.py")


if __name__ == "__main__":
    main()
