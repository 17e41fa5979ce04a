"""Tests of the embedded synthetic generator (sdx/data/synthetic.py).

Thresholds used here and why:
* classifier: a logistic regression (scikit-learn defaults) on translation-invariant features computed from the
  images' pixels only (downsampled to 64x64: residual-to-blur percentiles at three scales and a pooled log power
  spectrum) must beat 3 x chance on the val split. Raw pixel vectors are not used because the defects sit at
  random positions on randomly lit backgrounds, so a linear model on raw pixels is near chance by construction.
* class distinctness: for every pair of classes at least one per-image statistic (mask area, polarity
  difference, component count, largest-component share, largest-component length and width) differs with a
  large effect size, Cohen's d >= 0.8 (the conventional "large" threshold).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sdx.data import synthetic
from sdx.annotate.engine import compute_statistics
from sdx.data.levels import (CLASS_NAMES, CLASS_TO_PREFIX, DIRECTIONS, DISTRIBUTIONS, GRID_CELLS, NUMBERS, POLARITIES,
                      SALIENCIES, SCALES, SHAPES, T3_FIELDS, render_t4)

RECORD_KEYS = {"image_name", "class_name", "natural_language_description", "structured_attributes",
               "template_sentence"}


@pytest.fixture(scope="module")
def default_data() -> Path:
    """The default synthetic dataset, as `--data_dir synthetic` reads it (generated once into the shared cache)."""
    return synthetic.default_dataset_dir()


def _records(data_dir: Path, split: str) -> list[dict]:
    return json.loads((data_dir / f"{split}-text.json").read_text(encoding="utf-8"))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------------------
def test_layout_and_schema(default_data):
    data_dir = default_data
    for sub in ("train", "val", "train_mask", "val_mask"):
        assert (data_dir / sub).is_dir(), sub
    assert (data_dir / "SYNTHETIC.md").is_file()
    md = (data_dir / "SYNTHETIC.md").read_text()
    assert "SYNTHETIC" in md and synthetic.GENERATOR_VERSION in md and "seed" in md

    descriptions = json.loads((data_dir / "class_descriptions.json").read_text())
    assert sorted(descriptions) == sorted(synthetic.KINDS) == list(synthetic.DEFAULT_CLASSES)
    assert len(descriptions) >= 7
    for c, t1 in descriptions.items():
        assert c in CLASS_NAMES
        assert t1.startswith(f"A photo of {c}, which shows ") and " caused by " in t1

    for split in ("train", "val"):
        records = _records(data_dir, split)
        images = sorted(p.name for p in (data_dir / split).iterdir())
        assert sorted(r["image_name"] for r in records) == images
        masks = sorted(p.name for p in (data_dir / f"{split}_mask").iterdir())
        assert masks == sorted(n.replace(".jpg", ".png") for n in images)
        for r in records:
            assert set(r) == RECORD_KEYS
            prefix, number = r["image_name"][:-4].rsplit("_", 1)
            assert r["image_name"].endswith(".jpg") and number.isdigit() and len(number) >= 2
            assert CLASS_TO_PREFIX[r["class_name"]] == prefix
            assert isinstance(r["natural_language_description"], str) and len(r["natural_language_description"]) > 20
            t3 = r["structured_attributes"]
            assert list(t3) == list(T3_FIELDS)
            assert t3["Defect type"] == r["class_name"]
            assert t3["Shape"] in SHAPES and t3["Direction"] in DIRECTIONS
            assert t3["Spatial Distribution"] in DISTRIBUTIONS and t3["Number of Defects"] in NUMBERS + ("multiple",)
            assert t3["Scale"] in SCALES and t3["Polarity"] in POLARITIES and t3["Saliency"] in SALIENCIES
            cells = [c for c, _ in t3["Position"]]
            assert cells and set(cells) <= set(GRID_CELLS)
            assert abs(sum(s for _, s in t3["Position"]) - 1.0) < 1e-4
            with Image.open(data_dir / split / r["image_name"]) as im:
                assert im.format == "JPEG" and im.mode == "L" and im.size == (256, 256)


def test_masks_binary_nonempty_and_sized(default_data):
    data_dir = default_data
    for split in ("train", "val"):
        for r in _records(data_dir, split):
            stem = r["image_name"][:-4]
            with Image.open(data_dir / f"{split}_mask" / f"{stem}.png") as m:
                assert m.format == "PNG" and m.mode == "L" and m.size == (256, 256)
                arr = np.asarray(m)
            assert set(np.unique(arr)) <= {0, 255}
            assert (arr == 255).any(), r["image_name"]


def test_counts(default_data):
    data_dir = default_data
    for split, k in (("train", 12), ("val", 6)):
        counts = {}
        for r in _records(data_dir, split):
            counts[r["class_name"]] = counts.get(r["class_name"], 0) + 1
        assert counts == {c: k for c in synthetic.KINDS}


def test_t4_rendered_from_t3_and_rule_fields_match_files(default_data):
    """T4 is the authors' template of T3; T3's rule fields are what the engine measures on the written files."""
    from sdx.annotate.engine import annotate
    data_dir = default_data
    for split in ("train", "val"):
        for r in _records(data_dir, split)[::5]:
            t3 = r["structured_attributes"]
            assert r["template_sentence"] == render_t4(t3)
            stem = r["image_name"][:-4]
            again, _ = annotate(data_dir / split / r["image_name"], data_dir / f"{split}_mask" / f"{stem}.png",
                                r["class_name"], shape=t3["Shape"], direction=t3["Direction"],
                                distribution=t3["Spatial Distribution"])
            assert json.loads(json.dumps(again)) == t3


def test_t2_agrees_with_t3(default_data):
    """The per-image sentence states what was drawn: tone, direction, main cell and count agree with T3."""
    data_dir = default_data
    texts = []
    for r in _records(data_dir, "train") + _records(data_dir, "val"):
        t2, t3 = r["natural_language_description"], r["structured_attributes"]
        texts.append(t2)
        if t3["Polarity"] == "dark":
            assert "darker" in t2, t2
        elif t3["Polarity"] == "bright":
            assert "brighter" in t2, t2
        if t3["Direction"] != "none":
            assert {"horizontal": "horizontally", "vertical": "vertically",
                    "diagonal": "diagonally"}[t3["Direction"]] in t2, t2
        assert t3["Position"][0][0] in t2 or "most of the" in t2, t2
        n = t3["Number of Defects"]
        if n != "multiple" and t3["Shape"] != "network-like":
            word = {"one": ("one", "a single", "a ", "an ", "A ", "An ", "One"), }.get(n, (n, n.capitalize()))
            assert any(w in t2 for w in word), (n, t2)
    # varied phrasing: many distinct sentence openings
    assert len({t.split()[0] for t in texts}) >= 4
    assert len(set(texts)) == len(texts)


def test_deterministic_and_seeded(tmp_path):
    kw = dict(train_per_class=2, val_per_class=1, size=96, progress=False)
    synthetic.generate(tmp_path / "a", seed=3, **kw)
    synthetic.generate(tmp_path / "b", seed=3, **kw)
    synthetic.generate(tmp_path / "c", seed=4, **kw)
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert a == b
    assert set(a) == set(c)
    differing = [k for k in a if k.endswith(".jpg") and a[k] != c[k]]
    assert len(differing) == sum(1 for k in a if k.endswith(".jpg"))


def test_class_subset_and_independence(tmp_path):
    """A class's images do not depend on the other classes asked for; prefixes are accepted."""
    full = tmp_path / "full"
    sub = tmp_path / "sub"
    synthetic.generate(full, train_per_class=2, val_per_class=1, size=64, progress=False,
                       classes=["Bright scratch", "Patches", "Punching"])
    summary = synthetic.generate(sub, train_per_class=2, val_per_class=1, size=64, progress=False,
                                 classes=["pa", "bs"])
    assert summary["classes"] == ["Bright scratch", "Patches"]
    assert summary["splits"] == {"train": 4, "val": 2} and summary["images"] == 6 and summary["synthetic"] is True
    assert sorted(json.loads((sub / "class_descriptions.json").read_text())) == ["Bright scratch", "Patches"]
    d_full, d_sub = _tree_digest(full), _tree_digest(sub)
    for name, digest in d_sub.items():
        if name.endswith((".jpg", ".png")):
            assert d_full[name] == digest, name
    assert sorted(p.name for p in (sub / "train").iterdir()) == ["bs_01.jpg", "bs_02.jpg", "pa_01.jpg",
                                                                 "pa_02.jpg"]
    assert sorted(p.name for p in (sub / "val").iterdir()) == ["bs_03.jpg", "pa_03.jpg"]


@pytest.mark.parametrize("size", [32, 100, 300])
def test_any_size(tmp_path, size):
    synthetic.generate(tmp_path / "d", train_per_class=1, val_per_class=0, size=size, progress=False)
    for p in (tmp_path / "d" / "train_mask").iterdir():
        arr = np.asarray(Image.open(p))
        assert arr.shape == (size, size) and (arr == 255).any()
    for p in (tmp_path / "d" / "train").iterdir():
        assert Image.open(p).size == (size, size)
    assert _records(tmp_path / "d", "val") == []


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="size"):
        synthetic.generate(tmp_path / "x", size=8, progress=False)
    with pytest.raises(ValueError, match="train_per_class"):
        synthetic.generate(tmp_path / "x", train_per_class=-1, progress=False)
    with pytest.raises(ValueError, match="not a synthetic kind"):
        synthetic.generate(tmp_path / "x", classes=["Rust"], progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthetic.generate(busy, train_per_class=1, val_per_class=0, progress=False)
    synthetic.generate(busy, train_per_class=1, val_per_class=0, classes=["ws"], progress=False, overwrite=True)
    assert (busy / "train" / "ws_01.jpg").is_file()


def _mask_stats(data_dir: Path, split: str, r: dict) -> list[float]:
    stem = r["image_name"][:-4]
    img, mask = data_dir / split / r["image_name"], data_dir / f"{split}_mask" / f"{stem}.png"
    st = compute_statistics(img, mask)
    binary = np.asarray(Image.open(mask)) > 127
    labels, _ = ndimage.label(binary, structure=np.ones((3, 3), bool))
    largest = labels == (np.bincount(labels.ravel())[1:].argmax() + 1)
    ys, xs = np.nonzero(largest)
    ev = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)) + 1e-6 * np.eye(2))
    length = 4.0 * np.sqrt(ev[1])  # ~ full length of a uniform bar
    return [np.log(st["scale_ratio"] + 1e-6), st["polarity_diff"], np.log(st["component_count"]),
            st["largest_component_ratio"], np.log(length), np.log(largest.sum() / length)]


def test_classes_distinct_in_image_statistics(default_data):
    data_dir = default_data
    stats: dict[str, list] = {}
    for split in ("train", "val"):
        for r in _records(data_dir, split):
            stats.setdefault(r["class_name"], []).append(_mask_stats(data_dir, split, r))
    arrays = {c: np.array(v) for c, v in stats.items()}
    for a, b in itertools.combinations(sorted(arrays), 2):
        x, y = arrays[a], arrays[b]
        pooled = np.sqrt((x.var(0, ddof=1) + y.var(0, ddof=1)) / 2) + 1e-9
        d = np.abs(x.mean(0) - y.mean(0)) / pooled
        assert d.max() >= 0.8, (a, b, d.round(2))


def _pixel_features(path: Path, side: int = 64) -> np.ndarray:
    a = np.asarray(Image.open(path).convert("L").resize((side, side), Image.BILINEAR), dtype=np.float64)
    feats = []
    for sigma in (1, 3, 8):
        feats += list(np.percentile(a - ndimage.gaussian_filter(a, sigma), [0.2, 1, 5, 25, 50, 75, 95, 99, 99.8]))
    spec = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(a - a.mean()))))
    yy, xx = np.mgrid[-side // 2:side // 2, -side // 2:side // 2]
    radial = np.clip((np.hypot(yy, xx) / (side / 2) * 6).astype(int), 0, 5)
    angular = np.clip((np.mod(np.arctan2(yy, xx), np.pi) / np.pi * 4).astype(int), 0, 3)
    bins = (radial * 4 + angular).ravel()
    feats += list(np.bincount(bins, weights=spec.ravel(), minlength=24) / np.bincount(bins, minlength=24))
    return np.array(feats)


@pytest.mark.slow
def test_small_classifier_learns_the_classes(default_data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    data_dir = default_data
    xy = {}
    for split in ("train", "val"):
        records = _records(data_dir, split)
        xy[split] = (np.array([_pixel_features(data_dir / split / r["image_name"]) for r in records]),
                     np.array([r["class_name"] for r in records]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    clf.fit(*xy["train"])
    accuracy = float((clf.predict(xy["val"][0]) == xy["val"][1]).mean())
    chance = 1.0 / len(synthetic.KINDS)
    assert accuracy > 3 * chance, accuracy


def test_default_dataset_dir_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEELDEFECTX_CACHE", str(tmp_path / "cache"))
    params = dict(train_per_class=1, val_per_class=1, size=48, classes=["ps", "pu"])
    first = synthetic.default_dataset_dir(**params)
    assert first.parent == tmp_path / "cache" and first.name.startswith("synthetic-")
    assert (first / "train-text.json").is_file()
    stamp = (first / "train-text.json").stat().st_mtime_ns
    assert synthetic.default_dataset_dir(**params) == first
    assert (first / "train-text.json").stat().st_mtime_ns == stamp  # not regenerated
    other = synthetic.default_dataset_dir(**{**params, "seed": 1})
    assert other != first
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.name, other.name])
    with pytest.raises(TypeError, match="unknown"):
        synthetic.default_dataset_dir(bogus=1)


def test_default_dataset_dir_interrupted_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("STEELDEFECTX_CACHE", str(tmp_path / "cache"))
    calls = {"n": 0}
    real = synthetic.render_sample

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(synthetic, "render_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthetic.default_dataset_dir(train_per_class=2, val_per_class=1, size=48, classes=["os"])
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(synthetic, "render_sample", real)
    done = synthetic.default_dataset_dir(train_per_class=2, val_per_class=1, size=48, classes=["os"])
    assert len(_records(done, "train")) == 2


def test_cli_generate(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="steeldefectx.py")
    sub = parser.add_subparsers(dest="command", required=True)
    synthetic.register_cli(sub)
    out = tmp_path / "cli"
    args = parser.parse_args(["generate", str(out), "--train_per_class", "2", "--val_per_class", "1",
                              "--seed", "5", "--size", "64", "--classes", "bs", "Oil spot", "--quiet",
                              "--contact_sheet", str(tmp_path / "sheet.png")])
    summary = args.func(args)
    assert summary["classes"] == ["Bright scratch", "Oil spot"] and summary["seed"] == 5
    assert summary["splits"] == {"train": 4, "val": 2}
    assert (tmp_path / "sheet.png").stat().st_size > 1000
    assert "wrote 6 synthetic images" in capsys.readouterr().out
    help_text = parser.format_help() + sub.choices["generate"].format_help()
    for flag in ("--train_per_class", "--val_per_class", "--seed", "--classes", "--size"):
        assert flag in help_text


def test_contact_sheet(tmp_path):
    data_dir = tmp_path / "data"
    synthetic.generate(data_dir, train_per_class=2, val_per_class=0, size=48, classes=["bs", "pu", "ws"],
                       progress=False)
    png = synthetic.contact_sheet(data_dir, tmp_path / "sheet.png", n_per_class=1)
    with Image.open(png) as im:
        w, h = im.size
    assert h > w  # one row per class


def test_steeldefectx_cli_and_loader_read_the_output(tmp_path):
    """End to end through the steeldefectx.py entry point and the dataset builder."""
    steeldefectx = pytest.importorskip("steeldefectx")
    out = tmp_path / "gen"
    summary = steeldefectx.main(["generate", str(out), "--train_per_class", "3", "--val_per_class", "2",
                                 "--size", "64", "--classes", "bs,pu", "ws", "--quiet"])
    assert summary["classes"] == ["Bright scratch", "Punching", "Water spot"]
    ds = steeldefectx.load_steeldefectx(str(out), "fine")
    assert ds["test"].num_rows == 6
    assert ds["train"].num_rows + ds["validation"].num_rows == 9
    assert ds["train"].features["label"].names == summary["classes"]
    row = ds["test"][0]
    record = next(r for r in _records(out, "val") if r["image_name"] == row["image_name"])
    assert row["caption"] == record["natural_language_description"] == row["t2"]
    assert row["t4"] == record["template_sentence"]
    assert np.array_equal(np.asarray(row["mask"].convert("L")) > 127,
                          np.asarray(Image.open(out / "val_mask" / row["image_name"].replace(".jpg", ".png"))) > 127)


def test_cli_refuses_non_empty_out_with_one_line_error(tmp_path):
    parser = argparse.ArgumentParser()
    synthetic.register_cli(parser.add_subparsers(dest="command", required=True))
    (tmp_path / "keep.txt").write_text("x")
    args = parser.parse_args(["generate", str(tmp_path), "--quiet"])
    with pytest.raises(ValueError, match="not empty.*--overwrite"):
        args.func(args)
