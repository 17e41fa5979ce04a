#!/usr/bin/env bash
# Set up SteelDefectX in ./.venv. On a machine without an NVIDIA GPU it installs the CPU build of torch first,
# so installing the package (pip install -e ".[test]") never pulls a multi-GB CUDA build. Safe to run again (it is quick then).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[install] NVIDIA GPU found: installing the default (CUDA) torch build"
    python -m pip install -q "torch>=2.4,<2.15"
  else
    echo "[install] no GPU: installing the CPU build of torch"
    python -m pip install -q "torch==2.13.0" 2>/dev/null \
      || python -m pip install -q "torch>=2.4,<2.15" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[test]"
python -c "import torch, datasets, transformers, accelerate, peft; print(f'[install] ready: torch {torch.__version__}, datasets {datasets.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, peft {peft.__version__}')"
