#!/usr/bin/env python
"""SteelDefectX benchmark: the paper's four tasks plus retrieval and text-guided localization, in one report.

Example (paths are local checkpoint folders written by train_clip.py / train_vit.py, or Hub ids)::

    python eval_benchmark.py --data_dir synthetic \\
        --model_name_or_path t1=outputs/clip_t1 --model_name_or_path t3=outputs/clip_t3 \\
        --vision_model_name_or_path outputs/vit --tasks all --output_dir outputs/bench

writes outputs/bench/results.json, outputs/bench/report.md and PNG plots. Every image is encoded once per model
and cached under --cache_dir (default OUTPUT_DIR/cache); a re-run with the same models and data encodes
nothing. The protocols, every rule and every grid are documented in sdx/tasks.py; the report in sdx/report.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from sdx.tasks import parse_benchmark_args, run_benchmark

    return run_benchmark(parse_benchmark_args(argv), argv)


if __name__ == "__main__":
    main()
