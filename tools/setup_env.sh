#!/usr/bin/env bash
# Creates .venv (once) and installs torch==2.13.0 (CPU wheel) before anything else, so pip never
# resolves a newer torch with CUDA packages; then installs fxprune in editable mode.
# Sourced by tools/test.sh and tools/demo.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
if ! "$py" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "$py" -m pip install --quiet torch==2.13.0
fi
# the model zoos of the tests: without their dependencies, so that pip never resolves torch
if ! "$py" -c 'import importlib.metadata as m; assert m.version("torchvision") == "0.28.0" and m.version("timm") == "1.0.31"' 2>/dev/null; then
  "$py" -m pip install --quiet --no-deps torchvision==0.28.0 timm==1.0.31
fi
stamp=.venv/.fxprune-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  "$py" -m pip install --quiet -e ".[test,viz]"
  touch "$stamp"
fi
