#!/usr/bin/env bash
# One run on a GPU machine, at most 8 minutes and without network: build the extension
# (CUDA kernels for this GPU's architecture only), run the GPU tests (including the
# > 2^31-element case), then time every op and backend (bench/gpu_check.py) and write
# JSON under bench/results/ (also under $OUT when the caller collects files from there).
#
#   bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
log=bench/results/gpu_check_${stamp}.log
exec > >(tee "$log") 2>&1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

# Build: only this GPU's architecture (sm_90 on an H200) so the build fits the budget.
cap=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
t0=$(date +%s)
if ! timeout 240 "$PY" -m pip install -q --no-build-isolation --no-deps --no-index -e . ; then
  echo "BUILD FAILED"; exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

t0=$(date +%s)
timeout 150 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_build.py tests/test_cuda.py tests/test_triton.py
tests_rc=$?
echo "gpu tests: rc=$tests_rc in $(( $(date +%s) - t0 )) s"

json=bench/results/gpu_check_${stamp}.json
timeout 200 "$PY" bench/gpu_check.py --json "$json"
bench_rc=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp "$json" "$log" "$OUT"/ 2>/dev/null || true; fi
echo "tests rc=$tests_rc bench rc=$bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
