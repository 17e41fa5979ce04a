"""The installable package: pyproject.toml and requirements.txt agree, console scripts resolve and exit 0, the
dataset card ships inside the package, the top-level entry points print their help."""

from __future__ import annotations

import importlib
import importlib.resources
import re
import runpy
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT

from sdx import cli


def _requirement_lines(path):
    lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    return {re.split(r"[<>=!~ ]", ln, 1)[0].lower().replace("_", "-"): ln.replace(" ", "") for ln in lines if ln}


def test_requirements_txt_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~ ]", d, 1)[0].lower().replace("_", "-"): d.replace(" ", "")
                for d in project["dependencies"] + project["optional-dependencies"]["test"]}
    assert _requirement_lines(ROOT / "requirements.txt") == declared


def test_console_scripts_resolve_to_callables():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_console_scripts_return_none_and_data_errors_end_in_one_line(tmp_path, monkeypatch):
    # a console script hands its function's return value to sys.exit: anything but None would exit with 1
    monkeypatch.setattr(sys, "argv", ["steeldefectx", "generate", str(tmp_path / "syn"), "--train_per_class", "1",
                                      "--val_per_class", "0", "--classes", "bs", "--size", "32", "--quiet"])
    assert cli.steeldefectx_script() is None
    assert (tmp_path / "syn" / "train" / "bs_01.jpg").is_file()
    monkeypatch.setattr(sys, "argv", ["sdx", "stats", "--data_dir", str(tmp_path / "absent")])
    with pytest.raises(SystemExit) as exit_info:
        cli.sdx_script()
    assert str(exit_info.value).startswith("error: ") and "absent" in str(exit_info.value)


def test_dataset_card_ships_inside_the_package():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "data_card.md" in package_data["sdx.data"]
    card = importlib.resources.files("sdx.data").joinpath("data_card.md").read_text(encoding="utf-8")
    assert card.startswith("---") and "pretty_name: SteelDefectX" in card


@pytest.mark.parametrize("script", ["train_clip.py", "train_vit.py", "eval_benchmark.py", "steeldefectx.py"])
def test_top_level_entry_point_prints_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_top_level_entry_points_print_help_in_fresh_interpreters():
    scripts = ("train_clip.py", "train_vit.py", "eval_benchmark.py", "steeldefectx.py")
    running = {script: subprocess.Popen([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for script in scripts}
    for script, proc in running.items():  # started together: the four imports overlap
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "usage:" in out, (script, err[-500:])


@pytest.mark.parametrize("tool", list(cli.TOOLS))
def test_python_m_sdx_dispatches_to_each_tool(tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([tool, "--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
