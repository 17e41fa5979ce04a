"""The dataset builder: real-fixture counts, configs, splits, cache, export/push, and every bad input."""

from __future__ import annotations

import collections
import csv
import io
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import steeldefectx
from sdx.data import builder as D
from sdx.data import export as D_export
from sdx.data import levels as T

NEU_CLASSES = {"Crazing", "Inclusion", "Patches", "Pitted surface", "Rolled in scale", "Bright scratch"}


# ------------------------------------------------------------------------------------------------ helpers

def _jpeg(seed: int, size=(32, 32)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def _mask_png(size=(32, 32), values=(0, 255)) -> bytes:
    arr = np.full((size[1], size[0]), values[0], dtype=np.uint8)
    arr[8:16, 8:20] = values[1]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_layout(root: Path, per_class=(4, 2), classes=("Bright scratch", "Crazing", "Patches")) -> Path:
    """A tiny official-layout folder: images, masks on every other image, all text levels."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_descriptions.json").write_text(json.dumps({c: f"A photo of {c}, which shows test." for c in classes}))
    seed = 0
    for split, n in zip(("train", "val"), per_class):
        (root / split).mkdir()
        (root / f"{split}_mask").mkdir()
        records = []
        for c in classes:
            for i in range(n):
                seed += 1
                name = f"{T.CLASS_TO_PREFIX[c]}_{split}{i}.jpg"
                (root / split / name).write_bytes(_jpeg(seed))
                attrs = None
                if i % 2 == 0:
                    (root / f"{split}_mask" / name.replace(".jpg", ".png")).write_bytes(_mask_png())
                    attrs = {"Defect type": c, "Shape": "linear", "Direction": "none",
                             "Spatial Distribution": "isolated", "Number of Defects": "one",
                             "Position": [["top-left", 0.6], ["top-center", 0.4]], "Scale": "large",
                             "Polarity": "bright", "Saliency": "high"}
                records.append({"image_name": name, "class_name": c,
                                "natural_language_description": f"a {c} number {i}" if i % 3 else "",
                                "structured_attributes": attrs,
                                "template_sentence": T.render_t4(attrs) if attrs else ""})
        (root / f"{split}-text.json").write_text(json.dumps(records))
    return root


@pytest.fixture
def layout(tmp_path) -> Path:
    return make_layout(tmp_path / "raw")


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "cache")


def _records(root: Path, split="train") -> list:
    return json.loads((root / f"{split}-text.json").read_text())


def _write_records(root: Path, records, split="train") -> None:
    (root / f"{split}-text.json").write_text(json.dumps(records))


# ------------------------------------------------------------------------------------------------ real data

@pytest.fixture(scope="module")
def real_fine(real_subset, tmp_path_factory):
    """The real fixture with T2 captions (config "fine"): splits and masks are the same in every config."""
    return D.load_steeldefectx(real_subset, "fine", cache_dir=str(tmp_path_factory.mktemp("c")))


def test_real_fixture_counts(real_subset, real_fine):
    ds = real_fine
    assert len(ds["train"]) + len(ds["validation"]) == 2212
    assert len(ds["test"]) == 948
    names = D.class_names(ds)
    assert len(names) == 25 and names == sorted(names)
    with open(real_subset / "sources.csv") as f:
        sources = list(csv.DictReader(f))
    expected = collections.Counter((r["split"], r["image_name"].rsplit("_", 1)[0]) for r in sources)
    got = collections.Counter()
    for split, official in (("train", "train"), ("validation", "train"), ("test", "val")):
        for name in ds[split]["image_name"]:
            got[(official, name.rsplit("_", 1)[0])] += 1
    assert got == expected
    # masks on exactly the 1,800 NEU images
    neu = {r["image_name"] for r in sources if r["source_dataset"].startswith("NEU")}
    with_mask = set()
    for split in ds:
        raw = ds[split].cast_column("mask", datasets.Image(decode=False))
        with_mask |= {n for n, m in zip(raw["image_name"], raw["mask"]) if m is not None}
    assert len(neu) == 1800 and with_mask == neu
    # binarised masks
    row = next(r for r in ds["test"] if r["mask"] is not None)
    assert set(np.unique(np.asarray(row["mask"]))) <= {0, 255}


def test_real_fixture_validation_is_stratified(real_fine):
    train = collections.Counter(real_fine["train"]["class_name"])
    val = collections.Counter(real_fine["validation"]["class_name"])
    for name, n in val.items():
        assert n == round(0.1 * (n + train[name])) or n == 1


def test_real_fixture_fallbacks_are_counted(real_fine):
    rep = D.build_report(real_fine)
    # every image lacks T2 in the fixture: NEU ones fall back to T4, X-SDD ones to T1
    assert sum(rep["fallbacks"]["test"].values()) == 948
    assert rep["fallbacks"]["test"] == {"t2->t4": 540, "t2->t1": 408}
    row = next(r for r in real_fine["test"] if r["t4"])
    assert row["t2"] == "" and row["caption"] == row["t4"]


def test_strict_raises_instead_of_falling_back(layout, cache):
    with pytest.raises(D.DataError, match="natural_language_description"):
        D.load_steeldefectx(layout, "fine", cache_dir=cache, strict=True)


@pytest.mark.slow  # scans all 3,160 images and 1,800 masks again; test_stats_reports_problem_counts is the fast one
def test_stats_cli_real(real_subset, capsys):
    stats = steeldefectx.main(["stats", "--data_dir", str(real_subset)])
    assert sum(r["images"] for r in stats["per_class"]["train"].values()) == 2212
    assert sum(r["masks"] for s in stats["per_class"].values() for r in s.values()) == 1800
    assert stats["per_class"]["val"]["Crease"]["images"] == 0
    assert sum(r["lacking T3"] for r in stats["per_class"]["val"].values()) == 408
    out = capsys.readouterr().out
    assert "Red iron sheet" in out and "lacking T2" in out


# ------------------------------------------------------------------------------------------------ configs and splits

@pytest.mark.parametrize("config,level", list(T.CONFIG_LEVELS.items()))
def test_each_config_caption(layout, cache, config, level):
    ds = D.load_steeldefectx(layout, config, cache_dir=cache)
    assert set(ds) == {"train", "validation", "test"}
    row = ds["test"][0]
    rec = {r["image_name"]: r for r in _records(layout, "val")}[row["image_name"]]
    expected = {
        "t0": T.t0_prompt(row["class_name"]),
        "t1": f"A photo of {row['class_name']}, which shows test.",
        "t2": rec["natural_language_description"] or rec["template_sentence"]
              or f"A photo of {row['class_name']}, which shows test.",
        "t3": T.render_t3(rec["structured_attributes"]) if rec["structured_attributes"]
              else f"A photo of {row['class_name']}, which shows test.",
        "t4": rec["template_sentence"] or f"A photo of {row['class_name']}, which shows test.",
    }[level]
    assert row["caption"] == expected
    assert row["t0"] == T.t0_prompt(row["class_name"])


def test_level_names_as_configs(layout, cache):
    ds = D.load_steeldefectx(layout, "t2", cache_dir=cache)
    assert D.build_report(ds)["config"]["caption_level"] == "t2"


def test_t3_feature_shape(layout, cache):
    ds = D.load_steeldefectx(layout, cache_dir=cache)
    row = next(r for r in ds["train"] if r["t3"] is not None)
    assert list(row["t3"]) == list(T.T3_FIELDS)
    assert row["t3"]["Position"] == [{"cell": "top-left", "share": 0.6}, {"cell": "top-center", "share": 0.4}]


def test_shots_are_nested_and_from_train(layout, cache):
    full = D.load_steeldefectx(layout, cache_dir=cache, validation_fraction=0.25)
    val_names = set(full["validation"]["image_name"]) | set(full["test"]["image_name"])
    previous = set()
    for k in (1, 2, 3):
        ds = D.load_steeldefectx(layout, cache_dir=cache, validation_fraction=0.25, shots=k, seed=7)
        names = set(ds["train"]["image_name"])
        assert collections.Counter(ds["train"]["class_name"]) == {c: k for c in ("Bright scratch", "Crazing", "Patches")}
        assert previous <= names and not names & val_names
        assert list(ds["validation"]["image_name"]) == list(full["validation"]["image_name"])
        previous = names
    other = D.load_steeldefectx(layout, cache_dir=cache, validation_fraction=0.25, shots=2, seed=8)
    assert set(other["train"]["image_name"]) <= set(full["train"]["image_name"])


def test_class_subsets(layout, cache):
    seen = D.load_steeldefectx(layout, cache_dir=cache, exclude_classes=["Patches"])
    unseen = D.load_steeldefectx(layout, cache_dir=cache, classes=["Patches"])
    assert "Patches" not in set(seen["train"]["class_name"]) | set(seen["test"]["class_name"])
    assert set(unseen["test"]["class_name"]) == {"Patches"}
    assert D.class_names(seen) == D.class_names(unseen)  # label ids stay those of the full list
    assert set(unseen["test"]["label"]) == {D.class_names(unseen).index("Patches")}
    with pytest.raises(ValueError, match="unknown class"):
        D.load_steeldefectx(layout, cache_dir=cache, classes=["Nope"])


def test_without_masks(layout, cache):
    ds = D.load_steeldefectx(layout, cache_dir=cache, with_masks=False)
    assert all(m is None for m in list(ds["train"]["mask"]))


# ------------------------------------------------------------------------------------------------ cache

def test_cache_follows_raw_files(layout, cache):
    first = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    again = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert again["test"].cache_files == first["test"].cache_files  # reused
    records = _records(layout, "val")
    records[0]["natural_language_description"] = "an edited caption"
    _write_records(layout, records, "val")
    edited = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert "an edited caption" in list(edited["test"]["caption"])
    # adding an image (and its record) rebuilds too
    (layout / "val" / "bs_new.jpg").write_bytes(_jpeg(999))
    _write_records(layout, records + [{**records[0], "image_name": "bs_new.jpg"}], "val")
    grown = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert len(grown["test"]) == len(first["test"]) + 1


def test_overrides_equal_to_the_defaults_reuse_the_cache(layout, cache):
    first = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    same = D.load_steeldefectx(layout, "fine", cache_dir=cache, validation_fraction=0.1, on_error="raise",
                               caption_level="t2", classes=None, with_masks=True, seed=42, shots=None)
    assert same["test"].cache_files == first["test"].cache_files
    other = D.load_steeldefectx(layout, "fine", cache_dir=cache, validation_fraction=0.25)
    assert other["test"].cache_files != first["test"].cache_files
    shot1 = D.load_steeldefectx(layout, "fine", cache_dir=cache, shots=1, seed=1)
    shot2 = D.load_steeldefectx(layout, "fine", cache_dir=cache, shots=1, seed=2)
    assert shot1["train"].cache_files != shot2["train"].cache_files  # with shots, the seed still counts


def test_interrupted_build_is_never_loaded(layout, cache, monkeypatch):
    calls = {"n": 0}
    original = D.SteelDefectX._generate_examples

    def broken(self, **gen_kwargs):
        for i, example in enumerate(original(self, **gen_kwargs)):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("simulated interruption")
            yield example

    monkeypatch.setattr(D.SteelDefectX, "_generate_examples", broken)
    with pytest.raises(KeyboardInterrupt):
        D.load_steeldefectx(layout, cache_dir=cache)
    monkeypatch.setattr(D.SteelDefectX, "_generate_examples", original)
    ds = D.load_steeldefectx(layout, cache_dir=cache)
    assert len(ds["train"]) + len(ds["validation"]) == 12 and len(ds["test"]) == 6


# ------------------------------------------------------------------------------------------------ export / push

def _stored(path_or_bytes: dict | None) -> bytes | None:
    """The bytes of an image cell read without decoding: stored in Arrow, or in the file it points to."""
    if path_or_bytes is None:
        return None
    return path_or_bytes["bytes"] if path_or_bytes["bytes"] is not None else Path(path_or_bytes["path"]).read_bytes()


def _undecoded(ds: datasets.DatasetDict) -> datasets.DatasetDict:
    return datasets.DatasetDict({split: d.cast_column("image", datasets.Image(decode=False))
                                 .cast_column("mask", datasets.Image(decode=False)) for split, d in ds.items()})


def _assert_same_rows(ours: datasets.DatasetDict, plain: datasets.DatasetDict) -> None:
    """Stock load_dataset gives the builder's rows: same splits, features, order, texts, image and mask bytes."""
    assert set(plain) == set(ours)
    for split in ours:
        assert plain[split].features == ours[split].features
        a, b = _undecoded(ours)[split].to_list(), _undecoded(plain)[split].to_list()
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            assert _stored(x["image"]) == _stored(y["image"]) and _stored(x["mask"]) == _stored(y["mask"])
            assert {k: v for k, v in x.items() if k not in ("image", "mask")} == \
                   {k: v for k, v in y.items() if k not in ("image", "mask")}


@pytest.mark.slow
def test_export_round_trips_every_config_with_each_image_once(layout, cache, tmp_path):
    out = tmp_path / "export"
    result = steeldefectx.main(["export", str(out), "--data_dir", str(layout), "--cache_dir", cache])
    for cfg in T.CONFIG_LEVELS:
        ours = D.load_steeldefectx(layout, cfg, cache_dir=cache)
        plain = datasets.load_dataset(str(out), cfg, cache_dir=str(tmp_path / "plain"))
        _assert_same_rows(ours, plain)
        assert all(len(plain[s]) == result["rows"][f"{cfg}/{s}"] for s in plain)
    # every image stored once: one file per row, and no image bytes in the metadata files
    images = sorted(out.glob("data/*/images/*"))
    assert len(images) == 18 and sum(p.stat().st_size for p in images) == result["image_bytes"] - sum(
        p.stat().st_size for p in out.glob("data/*/masks/*"))
    assert all(p.stat().st_size < 20_000 for p in out.glob("data/*/*.parquet"))
    assert len(list(out.glob("data/*/*.parquet"))) == 3 * len(T.CONFIG_LEVELS)


def test_export_card_is_written_from_what_was_exported(layout, cache, tmp_path):
    out = tmp_path / "export"
    D_export.export_dataset(out, layout, configs=["default", "fine"], cache_dir=cache, validation_fraction=0.25)
    card = (out / "README.md").read_text()
    assert "configs:" in card and "config_name: fine" in card and "metadata_filenames" in card
    assert "pretty_name: SteelDefectX" in card and "SYNTHETIC" not in card and "2,324" not in card
    assert "| Crazing | 3 | 1 | 2 |" in card and "| **total** | 9 | 3 | 6 |" in card  # rows per split and class
    assert "| test | 6 | 3 | 3 | 3 |" in card                 # rows with T2 / T3 / T4 in test
    assert "| fine | T2 | t2->t1: " in card and "| default | T1 | none |" in card
    assert "a local folder in the official layout (`raw`)" in card and "Code: MIT" in card
    assert str(tmp_path) not in card                           # no local path in a card that may be published
    D_export.export_dataset(out, layout, configs=["default"], cache_dir=cache)  # a previous export is replaced
    assert not list(out.glob("data/*/metadata-fine.parquet"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        D_export.export_dataset(tmp_path / "busy", layout, configs=["default"], cache_dir=cache)


def test_load_dataset_steeldefectx_works_from_the_export_folder(layout, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steeldefectx.main(["export", "--data_dir", str(layout), "--cache_dir", cache, "--configs", "default", "fine"])
    assert (tmp_path / "steeldefectx" / "README.md").is_file()  # the default folder name
    plain = datasets.load_dataset("steeldefectx", "fine", cache_dir=str(tmp_path / "plain"))
    _assert_same_rows(D.load_steeldefectx(layout, "fine", cache_dir=cache), plain)
    assert datasets.load_dataset("steeldefectx", cache_dir=str(tmp_path / "plain"))["test"][0]["caption"] == \
        plain["test"][0]["t1"]                                  # no config name: the default config (T1)


def test_export_without_masks_round_trips(layout, cache, tmp_path):
    out = tmp_path / "export"
    D_export.export_dataset(out, layout, configs=["coarse"], cache_dir=cache, with_masks=False)
    assert not list(out.glob("data/*/masks")) and "masks/*" not in (out / "README.md").read_text()
    plain = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "plain"))   # the only config is the default
    _assert_same_rows(D.load_steeldefectx(layout, "coarse", cache_dir=cache, with_masks=False), plain)


@pytest.mark.slow  # exports all six configs of the 3,160-image fixture
def test_real_fixture_export_is_at_most_1_15_times_the_images(real_subset, tmp_path):
    out = tmp_path / "steeldefectx"
    result = D_export.export_dataset(out, real_subset, cache_dir=str(tmp_path / "c"))
    raw_images = sum(p.stat().st_size for split in ("train", "val") for p in (real_subset / split).iterdir())
    assert result["export_bytes"] <= 1.15 * raw_images, (result["export_bytes"], raw_images)
    plain = datasets.load_dataset(str(out), "fine", cache_dir=str(tmp_path / "plain"))
    assert {s: len(d) for s, d in plain.items()} == {"train": 1992, "validation": 220, "test": 948}


def test_export_of_synthetic_data_says_so_and_push_needs_a_data_dir(layout, cache, tmp_path, capsys):
    (layout / "SYNTHETIC.md").write_text("drawn by the generator")
    D_export.export_dataset(tmp_path / "export", layout, configs=["default"], cache_dir=cache)
    card = (tmp_path / "export" / "README.md").read_text()
    assert card.index("SYNTHETIC demo data, not SteelDefectX") > card.index("configs:")  # below the YAML block
    assert "synthetic generator" in card
    with pytest.raises(SystemExit):
        steeldefectx.main(["push", "me/steel"])
    assert "--data_dir" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.md"):
        D_export.read_card_template(tmp_path / "nope.md")


def test_push_then_load_dataset_by_repo_id(layout, cache, tmp_path, monkeypatch):
    """The Hub is mocked at the huggingface_hub boundary: the uploaded tree is kept under ./<repo_id>, which is
    where stock load_dataset("<you>/steeldefectx", cfg) finds a local folder of that name."""
    sent = {}

    class FakeApi:
        def __init__(self, token=None):
            sent["token"] = token

        def create_repo(self, **kw):
            sent["create"] = kw

        def upload_folder(self, folder_path, repo_id, **kw):
            sent["files"] = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
            sent["upload"] = kw
            shutil.copytree(folder_path, tmp_path / repo_id)
            return "commit-url"

    monkeypatch.setattr(D_export, "HfApi", FakeApi)
    monkeypatch.chdir(tmp_path)
    result = steeldefectx.main(["push", "me/steeldefectx", "--data_dir", str(layout), "--cache_dir", cache,
                                "--token", "hf_test", "--configs", "default", "fine"])
    assert sent["token"] == "hf_test" and result["repo_id"] == "me/steeldefectx"
    assert sent["create"]["repo_id"] == "me/steeldefectx" and sent["create"]["repo_type"] == "dataset"
    assert "README.md" in sent["files"] and "data/test/metadata-fine.parquet" in sent["files"]
    plain = datasets.load_dataset("me/steeldefectx", "fine", cache_dir=str(tmp_path / "plain"))
    _assert_same_rows(D.load_steeldefectx(layout, "fine", cache_dir=cache), plain)


def test_raw_folder_card_stops_the_imagefolder_mistake(layout, cache, tmp_path):
    wrong = datasets.load_dataset(str(layout), cache_dir=str(tmp_path / "p1"))
    assert wrong["train"].features["label"].names == ["train", "train_mask", "val", "val_mask"]  # the mistake
    before = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    (layout / "README.md").write_text("---\nlicense: other\n---\n# My copy of the release\n")
    steeldefectx.main(["card", "--data_dir", str(layout)])
    card = (layout / "README.md").read_text()
    assert "# My copy of the release" in card and "license: other" in card      # the user's card is kept
    right = datasets.load_dataset(str(layout), cache_dir=str(tmp_path / "p2"))
    assert {s: (len(d), d.column_names) for s, d in right.items()} == {"train": (12, ["image"]), "test": (6, ["image"])}
    after = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert after["test"].cache_files == before["test"].cache_files            # the card changes no build
    steeldefectx.main(["card", "--data_dir", str(layout)])                     # idempotent
    assert (layout / "README.md").read_text() == card
    with pytest.raises(ValueError, match="local folder"):
        D_export.write_raw_card("synthetic")


def test_push_without_token_fails_before_any_work(layout, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(D_export, "get_token", lambda: None)
    with pytest.raises(PermissionError, match="token"):
        D_export.push_dataset("me/steel", layout)


def test_offline_without_data_dir_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def offline(**kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(D.DataSourceError, match="--data_dir") as e:
        D.load_steeldefectx(None)
    assert "hf download Zhaosxian/SteelDefectX" in str(e.value)
    with pytest.raises(D.DataSourceError, match="could not be fetched"):
        D.load_steeldefectx("hub")  # the same as None on every command line


def test_missing_data_dir(tmp_path):
    with pytest.raises(D.DataSourceError, match="does not exist"):
        D.load_steeldefectx(tmp_path / "nope")


# ------------------------------------------------------------------------------------------------ bad input

def _load(layout, cache, **kw):
    return D.load_steeldefectx(layout, cache_dir=cache, **kw)


def _skipped(ds, split="train"):
    return D.build_report(ds)["skipped"].get(split, {})


def _assert_counts_balance(ds):
    """records in = rows out + records skipped, images in = rows out + images skipped, and each skipped item is
    counted under one reason (an item: a record with its image, a record alone, or an image alone)."""
    rep = D.build_report(ds)
    for split in rep["records_in"]:
        rows, skipped = rep["rows_out"].get(split, 0), rep["skipped"].get(split, {})
        assert rep["records_in"][split] == rows + rep["records_skipped"].get(split, 0)
        assert rep["images_in"][split] == rows + rep["images_skipped"].get(split, 0)
        assert sum(skipped.values()) <= rep["records_skipped"].get(split, 0) + rep["images_skipped"].get(split, 0)
        assert sum(skipped.values()) >= max(rep["records_skipped"].get(split, 0), rep["images_skipped"].get(split, 0))


@pytest.mark.parametrize("content,what", [
    (b"", "zero-byte"),
    (b"this is not an image at all", "cannot be decoded"),
    ("truncated", "cannot be decoded"),
])
def test_corrupt_truncated_zero_byte_images(layout, cache, content, what):
    target = layout / "train" / "bs_train1.jpg"
    if content == "truncated":
        content = target.read_bytes()[: len(target.read_bytes()) // 2]
    target.write_bytes(content)
    with pytest.raises(D.DataError, match=what) as e:
        _load(layout, cache)
    assert "bs_train1.jpg" in str(e.value) and "'image'" in str(e.value)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds) == {"unreadable image": 1}
    assert "bs_train1.jpg" not in list(ds["train"]["image_name"]) + list(ds["validation"]["image_name"])
    _assert_counts_balance(ds)


def test_extension_lies_about_format(layout, cache):
    # X-SDD ships JPEG files named .png: read by content, counted as a note
    src = layout / "train" / "bs_train1.jpg"
    src.rename(layout / "train" / "bs_train1.png")
    records = _records(layout)
    for r in records:
        if r["image_name"] == "bs_train1.jpg":
            r["image_name"] = "bs_train1.png"
    _write_records(layout, records)
    ds = _load(layout, cache)
    rep = D.build_report(ds)
    assert rep["notes"]["train"]["extension differs from content"] == 1
    row = [r for s in ("train", "validation") for r in ds[s] if r["image_name"] == "bs_train1.png"][0]
    assert row["image"].size == (32, 32)


def test_missing_mask_gives_none(layout, cache):
    ds = _load(layout, cache)
    rows = {r["image_name"]: r for s in ds for r in ds[s]}
    assert rows["bs_train1.jpg"]["mask"] is None and rows["bs_train0.jpg"]["mask"] is not None
    assert D.build_report(ds)["notes"]["train"]["images without mask"] == 6


def test_mask_of_another_size(layout, cache):
    (layout / "train_mask" / "bs_train0.png").write_bytes(_mask_png(size=(16, 16)))
    with pytest.raises(D.DataError, match="differs") as e:
        _load(layout, cache)
    assert "bs_train0.png" in str(e.value) and "'mask'" in str(e.value)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds) == {"bad mask": 1}
    _assert_counts_balance(ds)


def test_non_binary_mask_is_thresholded(layout, cache):
    (layout / "train_mask" / "bs_train0.png").write_bytes(_mask_png(values=(7, 200)))
    arr = np.asarray(Image.open(layout / "train_mask" / "bs_train2.png")).copy()
    arr[arr == 255] = 128
    arr[0, 0] = 127  # at the threshold: background
    Image.fromarray(arr).save(layout / "train_mask" / "bs_train2.png")
    ds = _load(layout, cache)
    rows = {r["image_name"]: r for s in ("train", "validation") for r in ds[s]}
    m0 = np.asarray(rows["bs_train0.jpg"]["mask"])
    m2 = np.asarray(rows["bs_train2.jpg"]["mask"])
    assert set(np.unique(m0)) == {0, 255} and m0[10, 10] == 255 and m0[0, 0] == 0
    assert m2[10, 10] == 255 and m2[0, 0] == 0
    assert D.build_report(ds)["notes"]["train"]["masks binarised (> 127)"] == 2


def test_unknown_class_name(layout, cache):
    records = _records(layout)
    records[2]["class_name"] = "Unicorn"
    _write_records(layout, records)
    with pytest.raises(D.DataError, match="record 2.class_name.*Unicorn"):
        _load(layout, cache)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds) == {"bad record": 1}  # one item (the record and its image), counted once
    _assert_counts_balance(ds)


def test_duplicate_image_name(layout, cache):
    records = _records(layout)
    _write_records(layout, records + [records[0]])
    with pytest.raises(D.DataError, match="already used by record 0"):
        _load(layout, cache)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds) == {"duplicate image_name": 1}


def test_image_with_no_record(layout, cache):
    (layout / "train" / "bs_orphan.jpg").write_bytes(_jpeg(5))
    with pytest.raises(D.DataError, match="no record") as e:
        _load(layout, cache)
    assert "bs_orphan.jpg" in str(e.value)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds) == {"image without record": 1}
    _assert_counts_balance(ds)


def test_record_with_no_image(layout, cache):
    (layout / "val" / "cracking_val1.jpg").unlink()
    with pytest.raises(D.DataError, match="val-text.json.*cracking_val1.jpg|no file.*cracking_val1.jpg"):
        _load(layout, cache)
    ds = _load(layout, cache, on_error="skip")
    assert _skipped(ds, "val") == {"record without image": 1}
    assert len(ds["test"]) == 5
    _assert_counts_balance(ds)


def test_malformed_json(layout, cache):
    (layout / "val-text.json").write_text('[{"image_name": "x.jpg",')
    with pytest.raises(D.DataError, match=r"val-text.json.*malformed JSON at line 1"):
        _load(layout, cache)
    (layout / "class_descriptions.json").write_text("{oops")
    with pytest.raises(D.DataError, match="class_descriptions.json.*malformed JSON"):
        _load(layout, cache)


@pytest.mark.parametrize("bad", ["../bs_train0.jpg", "sub/bs_train0.jpg", "sub\\bs.jpg", ".."])
def test_image_name_with_path(layout, cache, bad):
    records = _records(layout)
    records[0]["image_name"] = bad
    _write_records(layout, records)
    with pytest.raises(D.DataError, match=r"record 0.image_name.*not a plain file name"):
        _load(layout, cache)


def test_non_utf8_text(layout, cache):
    raw = (layout / "train-text.json").read_bytes().replace(b"a Bright", b"a Bri\xe9ght")
    (layout / "train-text.json").write_bytes(raw)
    with pytest.raises(D.DataError, match="train-text.json.*not valid UTF-8"):
        _load(layout, cache)


def test_bad_record_field_types(layout, cache):
    records = _records(layout)
    records[1]["structured_attributes"] = {"Shape": "linear"}
    _write_records(layout, records)
    with pytest.raises(D.DataError, match=r"record 1.structured_attributes.Defect type"):
        _load(layout, cache)
    records[1]["structured_attributes"] = None
    records[1]["class_name"] = 3
    _write_records(layout, records)
    with pytest.raises(D.DataError, match=r"record 1.class_name.*expected str"):
        _load(layout, cache)


def test_stats_reports_problem_counts(layout, capsys):
    (layout / "train" / "bs_train1.jpg").write_bytes(b"")
    (layout / "train" / "bs_orphan.jpg").write_bytes(_jpeg(5))
    stats = steeldefectx.main(["stats", "--data_dir", str(layout)])
    assert stats["report"]["skipped"]["train"] == {"unreadable image": 1, "image without record": 1}
    assert "unreadable image: 1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ embedded default, annotation

def test_synthetic_default_loads():
    ds = D.load_steeldefectx("synthetic", "structured")  # the shared caches, as --data_dir synthetic uses them
    rep = D.build_report(ds)
    assert len(ds["test"]) > 0 and sum(rep["fallbacks"].get(s, {}).get("t4->t1", 0) for s in ds) == 0
    row = ds["train"][0]
    assert row["mask"] is not None and row["t2"] and row["caption"] == row["t4"]
    assert row["t4"] == T.render_t4({**row["t3"], "Position": T.position_from_records(row["t3"]["Position"])})


def test_annotate_missing_fills_t3_t4_from_masks(layout, cache):
    from sdx.annotate.engine import annotate

    records = _records(layout, "val")
    for r in records:
        r["structured_attributes"], r["template_sentence"] = None, ""
    _write_records(layout, records, "val")
    plain = D.load_steeldefectx(layout, "structured", cache_dir=cache)
    assert D.build_report(plain)["fallbacks"]["test"] == {"t4->t1": 6}
    filled = D.load_steeldefectx(layout, "structured", cache_dir=cache, annotate_missing=True)
    rep = D.build_report(filled)
    assert rep["notes"]["test"]["T3/T4 computed from the mask"] == 3  # the three images with a mask
    assert rep["fallbacks"]["test"] == {"t4->t1": 3}                  # the three without
    row = next(r for r in filled["test"] if r["mask"] is not None)
    t3, t4 = annotate(layout / "val" / row["image_name"], layout / "val_mask" / row["image_name"].replace(".jpg", ".png"),
                      row["class_name"])
    assert row["caption"] == row["t4"] == t4
    assert row["t3"]["Scale"] == t3["Scale"] and row["t3"]["Shape"] == t3["Shape"]


def test_empty_split_is_left_out_and_reported(layout, cache):
    ds = D.load_steeldefectx(layout, cache_dir=cache, validation_fraction=0.0)
    assert set(ds) == {"train", "test"} and len(ds["train"]) == 12
    assert D.build_report(ds)["empty_splits_left_out"] == ["validation"]
    assert "empty splits left out: validation" in D.format_report(D.build_report(ds))
