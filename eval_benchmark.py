#!/usr/bin/env python
"""Run the SteelDefectX benchmark (the paper's four tasks, retrieval, localization) and write one report.

The work is done by ``sdx.bench.tasks.run_benchmark``; ``python eval_benchmark.py --help`` shows an example and every
option, and docs/benchmark.md explains the protocols and how to read the report."""

from __future__ import annotations

from typing import Any, Sequence


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from sdx.bench.tasks import parse_benchmark_args, run_benchmark

    return run_benchmark(parse_benchmark_args(argv), argv)


if __name__ == "__main__":
    main()
