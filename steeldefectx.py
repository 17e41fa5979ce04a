"""SteelDefectX dataset builder and data tools.

    from steeldefectx import load_steeldefectx
    ds = load_steeldefectx("path/to/SteelDefectX", "fine")        # or "synthetic", or None for the Hub

    python steeldefectx.py {stats,export,push,card,annotate,verify,generate} ...   (--help lists them)

Not a `datasets` loading script (datasets 4 removed them): for stock load_dataset, `export` writes a folder named
steeldefectx, so load_dataset("steeldefectx", "fine") works beside it. The builder lives in sdx.data.builder (export
and push in sdx.data.export); this file re-exports its public names and runs the data tools.
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
