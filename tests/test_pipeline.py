"""The main job end to end at the smallest settings: synthetic data and the real fixture."""

from __future__ import annotations

import json

import pytest

from sdx import pipeline

SECTIONS = ("## Task 1", "## Task 2", "## Task 3", "## Task 4", "## Retrieval", "## Text-guided localization")


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    summary = pipeline.main(["--preset", "smoke", "--output_dir", str(out), "--clip_levels", "t0,t4", *extra])
    report = (out / "bench" / "report.md").read_text()
    return out, summary, report


def test_demo_pipeline_on_synthetic_data(tmp_path, monkeypatch):
    monkeypatch.setenv("STEELDEFECTX_CACHE", str(tmp_path / "syn"))
    out, summary, report = _run(tmp_path)
    for section in SECTIONS:
        assert section in report, section
    assert "SYNTHETIC" in report.splitlines()[0]
    assert (out / "gallery.png").stat().st_size > 10_000
    assert set(summary["clip"]) == {"clip_t0", "clip_t4", "clip_t1_seen"}
    results = json.loads((out / "bench" / "results.json").read_text())
    assert results["meta"]["data"]["synthetic"] is True
    # the seen-classes CLIP really held its unseen classes out, and task 4 used them
    meta = json.loads((out / "clip_t1_seen" / "sdx_run.json").read_text())
    assert meta["exclude_classes"]
    assert "random-init" in report
    assert json.loads((out / "pipeline.json").read_text())["report"] == str(out / "bench" / "report.md")


def test_pipeline_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(SystemExit, match="already holds a run"):
        pipeline.main(["--preset", "smoke", "--output_dir", str(tmp_path / "run")])


def test_pipeline_on_the_real_fixture(tmp_path, real_subset):
    out, summary, report = _run(tmp_path, "--data_dir", str(real_subset), "--transfer_level", "none")
    assert "SYNTHETIC" not in report.splitlines()[0]
    assert "steeldefectx-real-subset" in report
    assert "random-init" in report and "subsampled" in report
    for section in SECTIONS[:3]:
        assert section in report
