#!/usr/bin/env bash
# Set up ngrpo in a virtual environment inside the checkout (.venv), idempotently:
#   1. create .venv with python3 (or $PYTHON) if it is missing;
#   2. install torch 2.13.0 first when no torch is importable (the CPU build; a plain
#      `pip install torch` would pull a multi-GB CUDA build). GPU users: install the torch build
#      you want into .venv before running this script and it is kept;
#   3. install ngrpo (editable) with its test tools, again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python_bin" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
stamp=.venv/.ngrpo-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]] || ! .venv/bin/python -c "import ngrpo" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  echo "$want" > "$stamp"
fi
