#!/usr/bin/env bash
# The test command: sets up .venv (torch==2.13.0 first), then runs the whole suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/tools/setup_env.sh"
cd "$root"
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
