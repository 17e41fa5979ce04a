"""Draw the README gallery from the real fixture: images, masks and every text level T0-T4.

    python bench/make_gallery.py [--data_dir ../shared/data/steeldefectx-real-subset] [--out docs/figures/gallery_real.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.data.builder import load_steeldefectx  # noqa: E402
from sdx.report.gallery import data_gallery  # noqa: E402


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared/data/steeldefectx-real-subset"))
    p.add_argument("--out", default=str(ROOT / "docs/figures/gallery_real.png"))
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--dpi", type=int, default=72)
    args = p.parse_args(argv)
    ds = load_steeldefectx(args.data_dir)
    out = data_gallery(ds, args.out, n_rows=args.rows,
                       title="SteelDefectX real fixture (NEU + X-SDD images, 13 of 25 classes), test split",
                       dpi=args.dpi)
    print(out)
    return out


if __name__ == "__main__":
    main()
