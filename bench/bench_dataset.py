"""Builder speed, fingerprint cost and scale.

    python bench/bench_dataset.py [floor] [--data_dir ../shared/data/steeldefectx-real-subset] [--repeat 3]
    python bench/bench_dataset.py scale [--factors 1 10 100] [--code_dir DIR]

floor: build the real fixture from scratch vs the floor (decode, resize, re-encode every image); the build checks
every image and mask on a few threads (sdx.data.layout.default_workers()), so the floor is timed on one thread and
on as many threads as the build. Also the cache fingerprint (name + size + mtime, the default) vs hashing every
image and mask (verify_images=True). Best of --repeat, sides interleaved, in one run.

scale: 720 synthetic images (12 classes x 60) are generated once, then repeated under new names (hard links; records
copied) to 10x and 100x; each size is built from scratch in its own subprocess, which reports time per image and
peak RSS (VmHWM on Linux: the imports included). --code_dir runs the same builds with another checkout's `sdx` (for a
before / after in one run).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("SDX_BENCH_CODE_DIR") or str(ROOT))  # --code_dir: another checkout's sdx

from sdx.data.builder import SPLITS, load_steeldefectx  # noqa: E402
from sdx.data.layout import default_workers, fingerprint_layout  # noqa: E402


# ---------------------------------------------------------------------------------------------------- floor

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


def fingerprint(data_dir: Path, verify_images: bool) -> tuple[float, str]:
    start = time.perf_counter()
    key = fingerprint_layout(data_dir, verify_images=verify_images)
    return time.perf_counter() - start, key


def floor_main(args) -> dict:
    data_dir = Path(args.data_dir)
    workers = default_workers()
    floors1, floorsw, builds, stat_fp, content_fp = [], [], [], [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits every side alike
        floors1.append(floor(data_dir, 1))
        floorsw.append(floor(data_dir, workers))
        builds.append(build(data_dir))
        stat_fp.append(fingerprint(data_dir, False))
        content_fp.append(fingerprint(data_dir, True))
    (t_floor1, n_images), (t_floorw, _), (t_build, n_rows) = min(floors1), min(floorsw), min(builds)
    t_stat, t_content = min(stat_fp)[0], min(content_fp)[0]
    result = {"images": n_images, "rows": n_rows, "workers": workers, "floor_1thread_s": round(t_floor1, 2),
              f"floor_{workers}threads_s": round(t_floorw, 2), "build_s": round(t_build, 2),
              "ratio_vs_1thread_floor": round(t_build / t_floor1, 2),
              "ratio_vs_same_threads_floor": round(t_build / t_floorw, 2), "goal": 1.5,
              "fingerprint_stat_s": round(t_stat, 4), "fingerprint_content_s": round(t_content, 4)}
    print(f"floor, 1 thread (decode+resize+re-encode {n_images} images): {t_floor1:.2f} s")
    print(f"floor, {workers} threads: {t_floorw:.2f} s")
    print(f"build from scratch ({n_rows} rows, masks checked and binarised, {workers} threads): {t_build:.2f} s")
    print(f"ratio build/floor: {result['ratio_vs_1thread_floor']:.2f} vs the 1-thread floor, "
          f"{result['ratio_vs_same_threads_floor']:.2f} vs the {workers}-thread floor (goal <= 1.5)")
    print(f"cache fingerprint: {t_stat * 1e3:.1f} ms by name + size + mtime (default), {t_content * 1e3:.1f} ms by "
          f"content (verify_images=True): {t_content / t_stat:.1f}x, {100 * t_content / t_build:.1f} % of a build")
    return result


# ---------------------------------------------------------------------------------------------------- scale

def make_scaled(base: Path, out: Path, factor: int) -> int:
    """``base`` with every image, mask and record repeated ``factor`` times under new names (hard links)."""
    out.mkdir(parents=True)
    for name in ("class_descriptions.json", "SYNTHETIC.md"):
        os.link(base / name, out / name)
    n = 0
    for image_dir, mask_dir, text_file in SPLITS.values():
        (out / image_dir).mkdir()
        (out / mask_dir).mkdir()
        records, copies = json.loads((base / text_file).read_text(encoding="utf-8")), []
        for k in range(factor):
            for rec in records:
                stem, ext = os.path.splitext(rec["image_name"])
                name = f"{stem}-{k}{ext}"
                os.link(base / image_dir / rec["image_name"], out / image_dir / name)
                mask = base / mask_dir / f"{stem}.png"
                if mask.is_file():
                    os.link(mask, out / mask_dir / f"{stem}-{k}.png")
                copies.append({**rec, "image_name": name})
        (out / text_file).write_text(json.dumps(copies, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        n += len(copies)
    return n


def peak_rss_mb() -> float:
    """This process's peak resident set size. Linux: VmHWM (ru_maxrss would also count the parent's memory
    at the spawn, which execve carries over); elsewhere ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 1 << 20)


def build_once(data_dir: str) -> dict:
    """One build from scratch in this process: seconds, rows and peak RSS (the `_build` subcommand)."""
    baseline = peak_rss_mb()
    with tempfile.TemporaryDirectory(dir=Path(data_dir).parent) as cache:
        start = time.perf_counter()
        ds = load_steeldefectx(data_dir, "default", cache_dir=cache)
        seconds = time.perf_counter() - start
        rows = sum(len(d) for d in ds.values())
    return {"rows": rows, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rss_after_imports_mb": baseline,
            "code": str(Path(sys.modules["sdx"].__file__).parents[1])}


def _subprocess_build(data_dir: Path, code_dir: str | None) -> dict:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "SDX_BENCH_CODE_DIR": code_dir or ""}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_build", str(data_dir)], env=env,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale_main(args) -> dict:
    from sdx.data.synthetic import generate  # optional here: only the scale run needs the generator

    results = {}
    with tempfile.TemporaryDirectory(prefix="sdx-scale-") as tmp:
        base = Path(tmp) / "base"
        generate(base, train_per_class=args.train_per_class, val_per_class=args.val_per_class, progress=False)
        for factor in args.factors:
            data = Path(tmp) / f"x{factor}"
            n = make_scaled(base, data, factor)
            for code in [None] + ([args.code_dir] if args.code_dir else []):
                r = _subprocess_build(data, code)
                label = f"x{factor}" + (f" ({code})" if code else "")
                results[label] = {**r, "images": n, "ms_per_image": 1e3 * r["seconds"] / n}
                print(f"{label:>12}: {n:6d} images, {r['seconds']:7.1f} s, {results[label]['ms_per_image']:.2f} "
                      f"ms/image, peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_imports_mb']:.0f})",
                      flush=True)
            for path in sorted(data.rglob("*"), reverse=True):  # free the links before the next size
                path.rmdir() if path.is_dir() else path.unlink()
    first = results[f"x{args.factors[0]}"]["peak_rss_mb"]
    for label, r in results.items():
        if "(" not in label:
            print(f"peak RSS {label} / x{args.factors[0]}: {r['peak_rss_mb'] / first:.2f} (goal <= 1.3)")
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode")
    p = sub.add_parser("floor", help="build vs floor, and the fingerprint cost (the default)")
    for q in (parser, p):
        q.add_argument("--data_dir", default=str(ROOT.parent / "shared/data/steeldefectx-real-subset"))
        q.add_argument("--repeat", type=int, default=3, help="best of N for each side")
    p = sub.add_parser("scale", help="time per image and peak RSS at 1x, 10x, 100x synthetic images")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--train_per_class", type=int, default=40)
    p.add_argument("--val_per_class", type=int, default=20)
    p.add_argument("--code_dir", default=None, help="also build with the `sdx` of this checkout (before / after)")
    p = sub.add_parser("_build", help=argparse.SUPPRESS)
    p.add_argument("data_dir")
    args = parser.parse_args(argv)
    if args.mode == "_build":
        result = build_once(args.data_dir)
        print(json.dumps(result))
        return result
    return scale_main(args) if args.mode == "scale" else floor_main(args)


if __name__ == "__main__":
    main()
