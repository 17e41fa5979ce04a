"""The data layer's guarantees against hostile or careless raw folders (issue 13): masks of every mode read by one
rule, 16-bit images, EXIF orientation, the cache fingerprint, each bad item counted once, dangling links,
decompression bombs, deep JSON, bad Position shares, hidden and dotted names."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from test_dataset import (  # noqa: F401 (cache and layout are fixtures, used by name)
    _assert_counts_balance, _jpeg, _records, _write_records, cache, layout)

import steeldefectx
from sdx.annotate import images
from sdx.data import builder as D
from sdx.data.export import export_dataset


def _rows(ds) -> dict:
    return {r["image_name"]: r for split in ds for r in ds[split]}


def _raw_rows(ds) -> dict:
    """Rows with image and mask as stored ({"path", "bytes"}), not decoded."""
    out = {}
    for split in ds:
        raw = ds[split].cast_column("image", datasets.Image(decode=False)).cast_column("mask",
                                                                                       datasets.Image(decode=False))
        out.update({r["image_name"]: r for r in raw})
    return out


BOX = np.zeros((32, 32), np.uint8)
BOX[8:16, 8:20] = 255


# ------------------------------------------------------------------------------------------------ masks (item 1)

def _save_mask(path: Path, mode: str) -> None:
    if mode == "palette index 1":
        img = Image.fromarray((BOX > 0).astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 255, 255, 255])        # index 0 black, index 1 white
        img.save(path)
    elif mode == "LA, opaque alpha":
        Image.fromarray(np.dstack([BOX, np.full_like(BOX, 255)]), "LA").save(path)
    elif mode == "16-bit 0/255":
        Image.fromarray(BOX.astype(np.uint16)).save(path)
    elif mode == "16-bit 0/65535":
        Image.fromarray(BOX.astype(np.uint16) * 257).save(path)
    elif mode == "RGB white box":
        Image.fromarray(np.dstack([BOX] * 3)).save(path)
    elif mode == "1-bit":
        Image.fromarray(BOX > 0).save(path)


@pytest.mark.parametrize("mode", ["palette index 1", "LA, opaque alpha", "16-bit 0/255", "16-bit 0/65535",
                                  "RGB white box", "1-bit"])
def test_every_mask_mode_is_read_by_the_engines_rule(layout, cache, mode):
    path = layout / "train_mask" / "bs_train0.png"
    _save_mask(path, mode)
    row = _rows(D.load_steeldefectx(layout, cache_dir=cache))["bs_train0.jpg"]
    assert np.array_equal(np.asarray(row["mask"]), BOX), mode
    # one rule: the builder stores exactly the annotation engine's reading of the file, binarised at > 127
    assert np.array_equal((images.load_mask_array(path) > 127) * 255, BOX)


def test_masks_sharing_a_stem_are_refused_by_name(layout, cache):
    Image.fromarray(BOX).save(layout / "train_mask" / "bs_train0.bmp")  # beside bs_train0.png
    with pytest.raises(D.DataError, match=r"bs_train0.bmp and bs_train0.png share the stem") as e:
        D.load_steeldefectx(layout, cache_dir=cache)
    assert e.value.field == "mask"
    ds = D.load_steeldefectx(layout, cache_dir=cache, on_error="skip")
    assert D.build_report(ds)["skipped"]["train"] == {"ambiguous mask": 1}
    assert "bs_train0.jpg" not in _rows(ds)
    _assert_counts_balance(ds)


def test_an_empty_mask_is_counted(layout, cache):
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(layout / "train_mask" / "bs_train0.png")
    ds = D.load_steeldefectx(layout, cache_dir=cache)
    assert D.build_report(ds)["notes"]["train"]["masks with no pixel > 127"] == 1


# ------------------------------------------------------------------------------------------------ 16-bit images (item 2)

def test_16bit_image_is_stored_as_8bit(layout, cache):
    gray = np.random.default_rng(0).integers(0, 256, size=(32, 32), dtype=np.uint8)
    (layout / "train" / "bs_train1.jpg").unlink()
    Image.fromarray(gray.astype(np.uint16) * 256 + 200).save(layout / "train" / "bs_train1.png")
    records = _records(layout)
    next(r for r in records if r["image_name"] == "bs_train1.jpg")["image_name"] = "bs_train1.png"
    _write_records(layout, records)
    ds = D.load_steeldefectx(layout, cache_dir=cache)
    image = _rows(ds)["bs_train1.png"]["image"]
    assert image.mode == "L" and np.array_equal(np.asarray(image), gray)
    # what the trainers do with it: no longer clipped to white
    assert np.array_equal(np.asarray(image.convert("RGB"))[..., 0], gray)
    assert np.array_equal(images.load_gray(layout / "train" / "bs_train1.png"), gray)  # the engine agrees
    assert D.build_report(ds)["notes"]["train"]["images scaled to 8 bits (16-bit or float: high byte)"] == 1


# ------------------------------------------------------------------------------------------------ EXIF orientation (item 3)

def _rotated_jpeg(path: Path) -> tuple[int, int]:
    """A 40x20 (WxH) JPEG with a bright block at its raw top-left, tagged orientation 6 (displayed rotated 90
    degrees clockwise: 20x40, the block top-right). Returns the displayed size."""
    arr = np.full((20, 40), 30, np.uint8)
    arr[0:8, 0:12] = 220
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return 20, 40


def test_exif_orientation_is_applied_once_to_image_and_mask(layout, cache):
    shown = _rotated_jpeg(layout / "train" / "bs_train0.jpg")
    mask = np.zeros((40, 20), np.uint8)          # the displayed grid: H 40, W 20; the block is now top-right
    mask[0:12, 12:20] = 255
    Image.fromarray(mask).save(layout / "train_mask" / "bs_train0.png")
    ds = D.load_steeldefectx(layout, cache_dir=cache)
    row = _rows(ds)["bs_train0.jpg"]
    assert row["image"].size == row["mask"].size == shown          # as `datasets` decodes them (trainers)
    stored = Image.open(io.BytesIO(_raw_rows(ds)["bs_train0.jpg"]["image"]["bytes"]))
    assert stored.size == shown and stored.getexif().get(0x0112) is None  # no tag left for a reader to apply
    pixels = np.asarray(stored.convert("L")).astype(int)                 # as the evaluator reads the bytes
    inside, outside = pixels[np.asarray(row["mask"]) > 0].mean(), pixels[np.asarray(row["mask"]) == 0].mean()
    assert inside > 200 and outside < 60        # the mask covers the bright block: both turned alike
    assert np.array_equal(np.asarray(row["image"].convert("L")), pixels)
    assert images.load_gray(layout / "train" / "bs_train0.jpg").shape == (40, 20)  # the engine, the same way
    assert D.build_report(ds)["notes"]["train"]["EXIF orientation applied (re-encoded as PNG)"] == 1


def test_a_mask_in_the_raw_grid_of_a_rotated_image_is_refused(layout, cache):
    _rotated_jpeg(layout / "train" / "bs_train0.jpg")
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(layout / "train_mask" / "bs_train0.png")
    with pytest.raises(D.DataError, match=r"bs_train0.png.*40x20 differs from its image's 20x40.*as displayed"):
        D.load_steeldefectx(layout, cache_dir=cache)


# ------------------------------------------------------------------------------------------------ cache fingerprint (item 5)

def _same_size_edit(path: Path, old: bytes, new: bytes) -> None:
    st = path.stat()
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p, rsync -a and tar do


def test_cache_sees_a_same_size_caption_edit_with_its_mtime_restored(layout, cache):
    first = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert "a Crazing number 1" in list(first["test"]["caption"])
    _same_size_edit(layout / "val-text.json", b"a Crazing number 1", b"a Crazing NUMBER 1")
    again = D.load_steeldefectx(layout, "fine", cache_dir=cache)
    assert "a Crazing NUMBER 1" in list(again["test"]["caption"])


def test_a_same_size_image_overwrite_needs_verify_images(layout, cache):
    target = layout / "val" / "cracking_val0.bmp"  # BMP: another picture of the same size has the same byte size
    (layout / "val" / "cracking_val0.jpg").unlink()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(target)
    records = _records(layout, "val")
    next(r for r in records if r["image_name"] == "cracking_val0.jpg")["image_name"] = "cracking_val0.bmp"
    _write_records(layout, records, "val")
    D.load_steeldefectx(layout, cache_dir=cache)
    D.load_steeldefectx(layout, cache_dir=cache, verify_images=True)
    st = target.stat()
    Image.fromarray(rng.integers(0, 256, size=(32, 32), dtype=np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p, rsync -a and tar do
    assert target.stat().st_size == st.st_size
    stale = _raw_rows(D.load_steeldefectx(layout, cache_dir=cache))["cracking_val0.bmp"]["image"]["bytes"]
    fresh = _raw_rows(D.load_steeldefectx(layout, cache_dir=cache, verify_images=True))
    assert stale != target.read_bytes()   # the default (name, size, mtime) does not see it: documented
    assert fresh["cracking_val0.bmp"]["image"]["bytes"] == target.read_bytes()


# ------------------------------------------------------------------------------------------------ counting (item 6)

def test_each_bad_item_is_counted_once(layout, cache):
    records = _records(layout)
    records[2]["class_name"] = "Unicorn"                                   # bad record; its image exists
    records.append({**records[0]})                                         # duplicate image_name
    records.append({**records[0], "image_name": "bs_absent.jpg"})          # record without image
    records.append({"image_name": 7})                                      # bad record naming nothing
    _write_records(layout, records)
    (layout / "train" / "bs_orphan.jpg").write_bytes(_jpeg(3))             # image without record
    (layout / "train" / "bs_train1.jpg").write_bytes(b"garbage")           # unreadable image
    ds = D.load_steeldefectx(layout, cache_dir=cache, on_error="skip")
    rep = D.build_report(ds)
    assert rep["skipped"]["train"] == {"bad record": 2, "duplicate image_name": 1, "record without image": 1,
                                       "image without record": 1, "unreadable image": 1}
    assert (rep["records_in"]["train"], rep["records_skipped"]["train"]) == (15, 5)   # 12 + 3 added
    assert (rep["images_in"]["train"], rep["images_skipped"]["train"]) == (13, 3)    # 12 + the orphan
    assert rep["rows_out"]["train"] == 10 == len(ds["train"]) + len(ds["validation"])
    _assert_counts_balance(ds)
    assert "records in 15 = rows out 10 + skipped 5" in D.format_report(rep)


# ------------------------------------------------------------------------------------------------ dangling links (item 7)

def test_a_dangling_symlink_is_an_unreadable_image_not_a_crash(layout, cache, tmp_path):
    target = layout / "train" / "bs_train1.jpg"
    target.unlink()
    target.symlink_to(tmp_path / "gone.jpg")
    (layout / "train" / "bs_orphan.jpg").symlink_to(tmp_path / "gone2.jpg")
    with pytest.raises(D.DataError, match=r"bs_train1.jpg.*dangling symbolic link"):
        D.load_steeldefectx(layout, cache_dir=cache)
    ds = D.load_steeldefectx(layout, cache_dir=cache, on_error="skip")
    assert D.build_report(ds)["skipped"]["train"] == {"unreadable image": 1, "image without record": 1}
    _assert_counts_balance(ds)
    stats = steeldefectx.main(["stats", "--data_dir", str(layout)])
    assert stats["report"]["skipped"]["train"]["unreadable image"] == 1
    out = export_dataset(tmp_path / "export", layout, configs=["default"], cache_dir=cache, on_error="skip")
    assert out["rows"]["default/train"] + out["rows"]["default/validation"] == 11


def test_a_dangling_mask_link_is_a_bad_mask(layout, cache, tmp_path):
    mask = layout / "train_mask" / "bs_train0.png"
    mask.unlink()
    mask.symlink_to(tmp_path / "gone.png")
    with pytest.raises(D.DataError, match=r"bs_train0.png.*'mask'.*dangling symbolic link"):
        D.load_steeldefectx(layout, cache_dir=cache)
    assert D.build_report(D.load_steeldefectx(layout, cache_dir=cache, on_error="skip"))["skipped"]["train"] == \
        {"bad mask": 1}


# ------------------------------------------------------------------------------------------------ bad files (item 8)

def test_decompression_bombs_name_the_file_and_are_skipped(layout, cache, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 32x32 = 1,024 pixels pass; 64x64 = 4,096 > 2 x 1,500
    (layout / "train" / "bs_train1.jpg").write_bytes(_jpeg(1, size=(64, 64)))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(layout / "val_mask" / "cracking_val0.png")
    with pytest.raises(D.DataError, match=r"bs_train1.jpg.*'image'.*decompression") as e:
        D.load_steeldefectx(layout, cache_dir=cache)
    assert "MAX_IMAGE_PIXELS" in str(e.value)
    ds = D.load_steeldefectx(layout, cache_dir=cache, on_error="skip")
    assert D.build_report(ds)["skipped"] == {"train": {"unreadable image": 1}, "val": {"bad mask": 1}}
    stats = steeldefectx.main(["stats", "--data_dir", str(layout)])
    assert stats["report"]["skipped"]["val"] == {"bad mask": 1}
    with pytest.raises(ValueError, match=r"cracking_val0.png.*decompression"):
        images.load_mask_array(layout / "val_mask" / "cracking_val0.png")


def test_verify_counts_a_bomb_as_unreadable(layout, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
    (layout / "val" / "cracking_val0.jpg").write_bytes(_jpeg(1, size=(64, 64)))
    report = steeldefectx.main(["verify", "--data_dir", str(layout), "--splits", "val", "--quiet"])
    assert report["files"]["val-text.json"]["unreadable"] == 1


def test_deeply_nested_json_is_a_data_error(layout, cache):
    (layout / "val-text.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(D.DataError, match=r"val-text.json.*nested too deeply"):
        D.load_steeldefectx(layout, cache_dir=cache)
    (layout / "class_descriptions.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(D.DataError, match=r"class_descriptions.json.*nested too deeply"):
        D.load_steeldefectx(layout, cache_dir=cache)


@pytest.mark.parametrize("share", [float("nan"), True, -0.1, "0.5"])
def test_bad_position_shares_are_refused_naming_the_field(layout, cache, share):
    records = _records(layout)
    records[0]["structured_attributes"]["Position"] = [["top-left", share]]
    (layout / "train-text.json").write_text(json.dumps(records))  # NaN written as the JSON literal NaN
    with pytest.raises(D.DataError, match=r"record 0.structured_attributes.Position.*share"):
        D.load_steeldefectx(layout, cache_dir=cache)


def test_a_record_for_a_hidden_file_says_it_is_hidden(layout, cache):
    (layout / "train" / "bs_train0.jpg").rename(layout / "train" / ".bs_train0.jpg")
    records = _records(layout)
    records[0]["image_name"] = ".bs_train0.jpg"
    _write_records(layout, records)
    with pytest.raises(D.DataError, match=r"record 0.image_name.*hidden file") as e:
        D.load_steeldefectx(layout, cache_dir=cache)
    assert "no file" not in str(e.value)


def test_two_dots_inside_a_name_are_fine(layout, cache):
    (layout / "train" / "bs_train0.jpg").rename(layout / "train" / "bs..100.jpg")
    (layout / "train_mask" / "bs_train0.png").rename(layout / "train_mask" / "bs..100.png")
    records = _records(layout)
    records[0]["image_name"] = "bs..100.jpg"
    _write_records(layout, records)
    row = _rows(D.load_steeldefectx(layout, cache_dir=cache))["bs..100.jpg"]
    assert row["mask"] is not None
