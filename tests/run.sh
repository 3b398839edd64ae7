#!/usr/bin/env bash
# One command from a fresh machine to a finished test run: install what is missing, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch only when none is installed, so an existing build is never replaced (plain PyPI gives the CUDA build on Linux).
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements-dev.txt
# -rs: every skip is listed with its reason at the end of the run.
python -m pytest -q -rs "$@"
