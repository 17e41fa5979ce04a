#!/usr/bin/env python
"""Run the SteelDefectX benchmark (the paper's four tasks, retrieval, localization) and write one report.

The work is done by ``sdx.bench.cli.run_benchmark``; ``python eval_benchmark.py --help`` shows an example and every
option, and docs/benchmark.md explains the protocols and how to read the report."""

from __future__ import annotations

from sdx.bench.cli import main

if __name__ == "__main__":
    main()
