#!/usr/bin/env bash
# One prepared GPU check (issue 11): the CUDA tests, the focal benchmark on CUDA (both backends, fp32 and bf16), the
# focal loss from the features (benchmarks/fused_linear.py, fp32 and bf16), the image trainer with --amp bf16
# --channels-last and --amp fp16, the fairseq criterion and temperature sweep on CUDA, and metrics / temperature
# scaling on CUDA tensors; one summary table; exit 1 if a check fails (see scripts/gpu_check.py for the checks and
# their criteria). About 5 minutes on one GPU once the Python is there.
#
#   bash scripts/gpu_check.sh [--dry-run] [--fashion-mnist DIR] [--output-dir DIR] [--only NAME,...] [--strict]
#
# Its Python, in this order:
#   1. $PY, if set (PY=/path/to/python bash scripts/gpu_check.sh);
#   2. .venv/bin/python, if the repository has one (`make install` builds it);
#   3. python3 on PATH, if it imports torch (a system or container torch);
#   4. otherwise it builds .venv: python3 -m venv + pip install -r requirements.lock + pip install -e . -- several
#      minutes and the package index needed (fairseq is not built then: its checks are SKIPped).
# The repository is put first on PYTHONPATH, so this checkout's code is what runs.
# Fashion-MNIST: /usr/share/datasets/fashion-mnist if present, else --fashion-mnist DIR (nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${PY:-}" ]]; then
    python="$PY"; origin="PY"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python; origin=".venv"
elif command -v python3 >/dev/null 2>&1 && python3 -c "import torch" >/dev/null 2>&1; then
    python=python3; origin="python3 on PATH, with torch"
else
    echo "gpu_check: no Python with torch found (PY unset, no .venv, python3 lacks torch): building .venv" >&2
    echo "gpu_check: python3 -m venv .venv; pip install -r requirements.lock; pip install -e . (minutes)" >&2
    if ! { python3 -m venv .venv && .venv/bin/python -m pip install -q -r requirements.lock \
           && .venv/bin/python -m pip install -q --no-deps -e . ; }; then
        echo "error: could not build .venv (is the package index reachable?); set PY=/path/to/python with torch" >&2
        exit 2
    fi
    python=.venv/bin/python; origin="a .venv built just now"
fi
if ! "$python" -c "import torch" >/dev/null 2>&1; then
    echo "error: $python ($origin) cannot import torch; set PY=/path/to/python with torch" >&2
    exit 2
fi
echo "gpu_check: python $python ($origin)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" scripts/gpu_check.py "$@"
