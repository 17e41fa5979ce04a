"""Builder speed: build the real fixture from scratch vs the floor (decode, resize, re-encode every image).

    python bench/bench_dataset.py [--data_dir ../shared/data/steeldefectx-real-subset] [--repeat 3]

The build checks every image and mask on a few threads (sdx.data.layout.default_workers()), so the floor is timed
twice: on one thread, and on the same number of threads as the build. Prints the times and both ratios
(goal: build / floor <= 1.5), measured in one run, best of --repeat, sides interleaved.
"""

from __future__ import annotations

import argparse
import io
import sys
from concurrent.futures import ThreadPoolExecutor
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.data.builder import SPLITS, load_steeldefectx  # noqa: E402
from sdx.data.layout import default_workers  # noqa: E402


def _floor_one(path: Path) -> None:
    with Image.open(path) as im:
        im.resize((256, 256), Image.BICUBIC).save(io.BytesIO(), format="JPEG", quality=95)


def floor(data_dir: Path, workers: int = 1) -> tuple[float, int]:
    """Decode, resize to 256x256 (bicubic) and re-encode (JPEG) every image: the least any build must do."""
    paths = [p for image_dir, _, _ in SPLITS.values() for p in sorted((data_dir / image_dir).iterdir())]
    start = time.perf_counter()
    if workers == 1:
        for p in paths:
            _floor_one(p)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(_floor_one, paths))
    return time.perf_counter() - start, len(paths)


def build(data_dir: Path) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        ds = load_steeldefectx(data_dir, "default", cache_dir=cache)
        return time.perf_counter() - start, sum(len(d) for d in ds.values())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(ROOT.parent / "shared/data/steeldefectx-real-subset"))
    parser.add_argument("--repeat", type=int, default=3, help="best of N for each side")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir)
    workers = default_workers()
    floors1, floorsw, builds = [], [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits every side alike
        floors1.append(floor(data_dir, 1))
        floorsw.append(floor(data_dir, workers))
        builds.append(build(data_dir))
    (t_floor1, n_images), (t_floorw, _), (t_build, n_rows) = min(floors1), min(floorsw), min(builds)
    result = {"images": n_images, "rows": n_rows, "workers": workers, "floor_1thread_s": round(t_floor1, 2),
              f"floor_{workers}threads_s": round(t_floorw, 2), "build_s": round(t_build, 2),
              "ratio_vs_1thread_floor": round(t_build / t_floor1, 2),
              "ratio_vs_same_threads_floor": round(t_build / t_floorw, 2), "goal": 1.5}
    print(f"floor, 1 thread (decode+resize+re-encode {n_images} images): {t_floor1:.2f} s")
    print(f"floor, {workers} threads: {t_floorw:.2f} s")
    print(f"build from scratch ({n_rows} rows, masks checked and binarised, {workers} threads): {t_build:.2f} s")
    print(f"ratio build/floor: {result['ratio_vs_1thread_floor']:.2f} vs the 1-thread floor, "
          f"{result['ratio_vs_same_threads_floor']:.2f} vs the {workers}-thread floor (goal <= 1.5)")
    return result


if __name__ == "__main__":
    main()
