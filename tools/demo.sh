#!/usr/bin/env bash
# Sets up .venv, prunes the bundled example models, prints the reports and writes the dumps to out/demo.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/tools/setup_env.sh"
cd "$root"
exec .venv/bin/python -m fxprune.cli demo --dump-dir out/demo "$@"
