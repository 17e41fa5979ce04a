"""The main job: its arguments (flags, YAML, JSON, presets) and, marked slow, end to end at the smallest settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import assert_report_baselines, loc_target

from sdx import pipeline

SECTIONS = ("## Task 1", "## Task 2", "## Task 3", "## Task 4", "## Retrieval", "## Text-guided localization")


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    summary = pipeline.main(["--preset", "smoke", "--output_dir", str(out), "--clip_levels", "t0,t4", *extra])
    report = (out / "bench" / "report.md").read_text()
    assert_report_baselines(report, json.loads((out / "bench" / "results.json").read_text()))
    return out, summary, report


@pytest.mark.slow
def test_demo_pipeline_on_synthetic_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEELDEFECTX_CACHE", str(tmp_path / "syn"))
    out, summary, report = _run(tmp_path, "--jobs", "2")   # side by side: each model's output in logs/
    assert {p.name for p in (out / "logs").iterdir()} == {"vit.log", "clip_t0.log", "clip_t4.log", "clip_t1_seen.log"}
    assert summary["workers"] == 2 and "training: 100%" in (out / "logs" / "vit.log").read_text()
    last = capsys.readouterr().out.rsplit("Done in", 1)[1]  # the last message names every output
    for path in (out / "bench" / "report.md", out / "gallery.png", out / "pipeline.json"):
        assert str(path) in last
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
    (tmp_path / "run" / "pipeline.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run"):
        pipeline.main(["--preset", "smoke", "--output_dir", str(tmp_path / "run")])
    (tmp_path / "run" / "pipeline.json").unlink()
    (tmp_path / "run" / "something").write_text("x")  # a user's folder: refused even with the flag
    with pytest.raises(FileExistsError, match="holds no pipeline run"):
        pipeline.main(["--preset", "smoke", "--output_dir", str(tmp_path / "run"), "--overwrite_output_dir"])


@pytest.mark.slow
def test_pipeline_on_the_real_fixture(tmp_path, real_subset, magnetic_tile):
    """The README's real-data command (at the smoke preset): the magnetic-tile set is a target of its own."""
    out, summary, report = _run(tmp_path, "--data_dir", str(real_subset), "--transfer_level", "none",
                                "--external_data", str(magnetic_tile), "--jobs", "1")   # one after another
    assert summary["workers"] == 1 and not (out / "logs").exists()
    assert "SYNTHETIC" not in report.splitlines()[0]
    assert "steeldefectx-real-subset" in report
    assert "random-init" in report and "subsampled" in report
    for section in SECTIONS:
        assert section in report
    assert "### External set: magnetic_tile (392 images, 5 classes" in report
    results = json.loads((out / "bench" / "results.json").read_text())
    assert loc_target(results, "magnetic_tile")["images"] == 392
    assert summary["external_data"] == [str(magnetic_tile)]


def test_arguments_from_flags_yaml_and_json(tmp_path):
    args = pipeline.parse_args(["--preset", "smoke", "--vit_epochs", "3", "--synthetic_size", "5", "2",
                                "--overwrite_output_dir"])
    settings = args.settings()
    assert settings["vit_epochs"] == 3 and settings["synthetic_size"] == (5, 2) and args.overwrite_output_dir
    assert settings["clip_epochs"] == pipeline.PRESETS["smoke"]["clip_epochs"]  # not given: the preset's
    (tmp_path / "run.yaml").write_text("preset: smoke\nclip_levels: t2\nseed: 7\n")
    (tmp_path / "run.json").write_text(json.dumps({"preset": "full", "tasks": "task1"}))
    from_yaml = pipeline.parse_args([str(tmp_path / "run.yaml")])
    from_json = pipeline.parse_args([str(tmp_path / "run.json")])
    assert (from_yaml.preset, from_yaml.clip_levels, from_yaml.seed) == ("smoke", "t2", 7)
    assert (from_json.preset, from_json.tasks, from_json.data_dir) == ("full", "task1", "synthetic")
    with pytest.raises(ValueError, match="two numbers"):
        pipeline.parse_args(["--synthetic_size", "5"])
    with pytest.raises(SystemExit):
        pipeline.parse_args(["--preset", "huge"])


def test_demo_preset_sizes_reach_the_trainers():
    """The demo's CNN at vit_image_size (96 px), its CLIPs at image_size with the preset's vision overrides;
    --vit_image_size and --clip_vision_config replace them; a CLIP checkpoint takes none of them."""
    args = pipeline.parse_args([])
    s = args.settings()
    vit = pipeline._vit_argv(args, s, "D", Path("v"))
    clip = pipeline._clip_argv(args, s, "D", Path("c"), "t0", [])
    assert vit[vit.index("--image_size") + 1] == "96" and clip[clip.index("--image_size") + 1] == "64"
    assert clip[clip.index("--vision_config_overrides") + 1] == "patch_size=8"
    args = pipeline.parse_args(["--vit_image_size", "64", "--clip_vision_config", "patch_size=16"])
    s = args.settings()
    vit = pipeline._vit_argv(args, s, "D", Path("v"))
    assert vit[vit.index("--image_size") + 1] == "64"
    assert "patch_size=16" in pipeline._clip_argv(args, s, "D", Path("c"), "t0", [])
    smoke = pipeline.parse_args(["--preset", "smoke"])
    vit = pipeline._vit_argv(smoke, smoke.settings(), "D", Path("v"))
    assert vit[vit.index("--image_size") + 1] == "32"
    ckpt = pipeline.parse_args(["--clip_model_name_or_path", "m"])
    assert "--vision_config_overrides" not in pipeline._clip_argv(ckpt, ckpt.settings(), "D", Path("c"), "t0", [])


def test_clip_runs_one_per_level_and_one_on_the_seen_classes():
    names = ["A", "B", "C", "D", "E", "F", "A"]
    runs, unseen = pipeline._clip_runs(pipeline.parse_args(["--clip_levels", "t0,coarse"]), names)
    assert unseen == ["B", "F"]
    assert runs == [("clip_t0", "t0", []), ("clip_t1", "t1", []),
                    ("clip_t1_seen", "t1", ["--exclude_classes", "B", "F"])]
    runs, _ = pipeline._clip_runs(pipeline.parse_args(["--clip_levels", "t4", "--transfer_level", "none"]), names)
    assert runs == [("clip_t4", "t4", [])]
    with pytest.raises(ValueError, match="--clip_levels: unknown text level 't9'"):
        pipeline._clip_runs(pipeline.parse_args(["--clip_levels", "t0,t9"]), names)
    from sdx.bench.cli import parse_benchmark_args as bench_args   # the evaluator's level flags: the same parser

    for flag in ("--levels", "--adapter_levels"):
        with pytest.raises(SystemExit, match=f"{flag}: unknown text level 'x'"):
            bench_args(["--output_dir", "o", flag, "t1,x"])


def test_side_by_side_training_starts_the_longest_runs_first():
    runs, _ = pipeline._clip_runs(pipeline.parse_args(["--clip_levels", "t0,t1,t4"]), ["A", "B", "C"])
    assert [r[0] for r in pipeline._longest_first(runs)] == ["clip_t4", "clip_t1", "clip_t0", "clip_t1_seen"]
    assert pipeline.parse_args(["--jobs", "2"]).jobs == 2
    with pytest.raises(ValueError, match="--jobs must be >= 0"):
        pipeline.parse_args(["--jobs", "-1"])


@pytest.mark.slow
def test_a_failed_side_by_side_training_names_its_job_and_log(tmp_path):
    from sdx.train.parallel import TrainingJob, run_trainings

    bad = TrainingJob("clip_bad", "clip", ("--data_dir", str(tmp_path / "missing"), "--output_dir",
                                           str(tmp_path / "out")))
    with pytest.raises(RuntimeError, match="training 'clip_bad' failed") as err:
        run_trainings([bad], 2, tmp_path / "logs")
    log = tmp_path / "logs" / "clip_bad.log"
    assert str(log) in str(err.value)
    assert "Traceback" in log.read_text() and "missing" in log.read_text()
