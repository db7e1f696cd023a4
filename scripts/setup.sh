#!/usr/bin/env bash
# One-time set-up of a fresh machine: a virtual environment in .venv with lorafx and its tests.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: on CPU-only CI machines 2.13.0 is a local CPU build; the project's torch
# range then installs nothing more (an unpinned torch would pull a multi-GB CUDA build).
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,sam2]"
# SAM2 (optional: click-to-matte). Its PyPI release requires torchvision and would replace torch
# with a CUDA build; the video predictor needs neither, so install it without dependencies.
python -c "import sam2" 2>/dev/null || SAM2_BUILD_CUDA=0 python -m pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
echo "lorafx set up in .venv ($(python -c 'import lorafx; print(lorafx.__version__)'))"
