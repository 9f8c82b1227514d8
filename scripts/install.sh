#!/usr/bin/env bash
# Installs what cgh_ops needs on a fresh machine and builds its native extension in place.
#
#   bash scripts/install.sh
#
# * torch/torchvision pinned to the builds this project is developed and tested with.
# * The extension is built once (CPU kernels always; CUDA kernels when torch is a CUDA build
#   and nvcc is found -- no GPU needed) and rebuilt only when csrc/ or setup.py changed.
#   Force CPU-only with CGH_OPS_CPU_ONLY=1.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
$PY -m pip install --quiet --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" numpy ninja setuptools wheel \
    pytest expecttest pytest-benchmark scikit-learn tqdm matplotlib

so=$(ls cgh_ops/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -n 1)" ]; then
    echo "cgh_ops: extension $so is up to date"
else
    start=$(date +%s)
    MAX_JOBS=${MAX_JOBS:-$(nproc)} $PY -m pip install --quiet --disable-pip-version-check \
        --no-build-isolation --no-deps -e .
    echo "cgh_ops: extension built in $(( $(date +%s) - start )) s"
fi
$PY -m cgh_ops.info
