"""How the geometry-derived T3 fields fall per class on the real fixture's masked images.

Runs sdx.annotate.engine.analyze (all geometry features) over every image of the fixture that has a mask
(train_mask + val_mask: the 1,800 NEU images) and writes

* a per-class markdown table (counts of Shape, Direction, Spatial Distribution, and the median of the main
  geometry features) to stdout and to --table (default docs/attributes_by_class.md),
* a figure (--figure, default docs/figures/attributes_by_class.png): per-class stacked bars of the three fields
  and a scatter of elongation against solidity of the dominant component, coloured by class,
* optionally (--sheet FILE.png) a contact sheet: --per_class random masked images per class with the mask
  outline in red and the derived Shape / Direction / Spatial Distribution / Number of Defects under each.

    python bench/attributes_report.py [--data_dir ../shared/data/steeldefectx-real-subset]
        [--table docs/attributes_by_class.md] [--figure docs/figures/attributes_by_class.png]
        [--sheet /tmp/attributes_sheet.png --per_class 5 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdx.annotate.engine import analyze  # noqa: E402
from sdx.data.levels import DIRECTIONS, DISTRIBUTIONS, SHAPES  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    def tqdm(x, **_):
        return x

FEATURES = ("elongation", "solidity", "roundness", "thickness", "slenderness", "holes", "area_ratio", "extent",
            "largest_ratio")


def masked_records(data_dir: Path):
    for split in ("train", "val"):
        for rec in json.loads((data_dir / f"{split}-text.json").read_text()):
            mask = data_dir / f"{split}_mask" / (Path(rec["image_name"]).stem + ".png")
            if mask.is_file():
                yield split, rec, data_dir / split / rec["image_name"], mask


def collect(data_dir: Path) -> list[dict]:
    rows = []
    for split, rec, image, mask in tqdm(list(masked_records(data_dir)), desc="annotating", unit="pair"):
        res = analyze(image, mask, rec["class_name"], full_features=True)
        rows.append({"split": split, "image_name": rec["image_name"], "class_name": rec["class_name"],
                     "image": image, "mask": mask, **{k: res["attributes"][k] for k in
                                                       ("Shape", "Direction", "Spatial Distribution",
                                                        "Number of Defects")},
                     "features": res["geometry"]})
    return rows


def table(rows: list[dict]) -> str:
    by_class = defaultdict(list)
    for r in rows:
        by_class[r["class_name"]].append(r)
    out = ["| class | n | Shape | Direction | Spatial Distribution | " + " | ".join(
        f"median {f}" for f in ("elongation", "solidity", "thickness", "area_ratio")) + " |",
        "|---|---|---|---|---|---|---|---|---|"]
    for cls in sorted(by_class):
        rs = by_class[cls]

        def counts(field, rs=rs):
            c = Counter(r[field] for r in rs)
            return ", ".join(f"{k} {v}" for k, v in c.most_common())

        med = [np.median([r["features"].get(f, np.nan) for r in rs if r["features"].get(f) is not None])
               for f in ("elongation", "solidity", "thickness", "area_ratio")]
        out.append(f"| {cls} | {len(rs)} | {counts('Shape')} | {counts('Direction')} | "
                   f"{counts('Spatial Distribution')} | " + " | ".join(f"{m:.2f}" for m in med) + " |")
    return "\n".join(out)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = sorted({r["class_name"] for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2), dpi=70)
    for ax, (field, values) in zip(axes[:3], (("Shape", SHAPES), ("Direction", DIRECTIONS),
                                               ("Spatial Distribution", DISTRIBUTIONS))):
        left = np.zeros(len(classes))
        cmap = plt.get_cmap("tab20" if len(values) > 10 else "tab10")
        for i, v in enumerate(values):
            frac = np.array([np.mean([r[field] == v for r in rows if r["class_name"] == c]) for c in classes])
            if frac.sum() == 0:
                continue
            ax.barh(classes, frac, left=left, color=cmap(i), label=v)
            left += frac
        ax.set_title(field)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, -0.55), ncol=3, frameon=False)
        if ax is not axes[0]:
            ax.set_yticklabels([])
    ax = axes[3]
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(classes):
        e = [r["features"]["elongation"] for r in rows if r["class_name"] == c]
        s = [r["features"]["solidity"] for r in rows if r["class_name"] == c]
        ax.scatter(e, s, s=4, alpha=0.5, color=cmap(i), label=c)
    ax.set_xscale("log")
    ax.axvline(2, color="grey", lw=0.7, ls="--")
    ax.axvline(4, color="grey", lw=0.7, ls="--")
    ax.axhline(0.75, color="grey", lw=0.7, ls=":")
    ax.set_xlabel("elongation (dominant component)")
    ax.set_ylabel("solidity")
    ax.legend(fontsize=6, markerscale=3, loc="lower right")
    fig.suptitle(f"Geometry-derived T3 fields on the real fixture ({len(rows)} masked images)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def contact_sheet(rows: list[dict], path: Path, per_class: int, seed: int) -> None:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    classes = sorted({r["class_name"] for r in rows})
    size, pad = 160, 28
    sheet = Image.new("RGB", (size * per_class, (size + pad) * len(classes)))
    draw = ImageDraw.Draw(sheet)
    for ri, cls in enumerate(classes):
        rs = [r for r in rows if r["class_name"] == cls]
        for ci, idx in enumerate(rng.choice(len(rs), min(per_class, len(rs)), replace=False)):
            r = rs[idx]
            img = np.array(Image.open(r["image"]).convert("RGB").resize((size, size)))
            m = np.array(Image.open(r["mask"]).convert("L").resize((size, size))) > 127
            edge = (m ^ np.roll(m, 1, 0)) | (m ^ np.roll(m, 1, 1))
            img[edge] = (255, 0, 0)
            x, y = ci * size, ri * (size + pad)
            sheet.paste(Image.fromarray(img), (x, y))
            draw.text((x + 2, y + 2), r["image_name"], fill=(255, 255, 0))
            draw.text((x + 2, y + size + 1), f"{r['Shape']} / {r['Direction']}", fill=(255, 255, 255))
            draw.text((x + 2, y + size + 14), f"{r['Spatial Distribution']} / {r['Number of Defects']}",
                      fill=(180, 255, 180))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data" / "steeldefectx-real-subset")
    ap.add_argument("--table", type=Path, default=ROOT / "docs" / "attributes_by_class.md")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "attributes_by_class.png")
    ap.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here")
    ap.add_argument("--per_class", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = collect(args.data_dir)
    if not rows:
        raise SystemExit(f"no masked images found under {args.data_dir}")
    md = table(rows)
    print(md)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("# Geometry-derived T3 fields per class (real fixture, masked images)\n\n"
                          "Written by `python bench/attributes_report.py`; rules in [annotation.md](annotation.md) "
                          "(`sdx.annotate.geometry`).\n\n" + md + "\n")
    figure(rows, args.figure)
    print(f"table -> {args.table}\nfigure -> {args.figure}")
    if args.sheet:
        contact_sheet(rows, args.sheet, args.per_class, args.seed)
        print(f"contact sheet -> {args.sheet}")
    return {"rows": len(rows), "table": str(args.table), "figure": str(args.figure)}


if __name__ == "__main__":
    main()
