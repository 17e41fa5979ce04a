"""The installable package: pyproject.toml and requirements.txt agree, every console script resolves."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib

from conftest import ROOT


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


def test_top_level_entry_points_print_help():
    for script in ("train_clip.py", "train_vit.py", "eval_benchmark.py", "steeldefectx.py"):
        done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, (script, done.stderr[-500:])
