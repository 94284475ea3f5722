#!/usr/bin/env bash
# One prepared GPU check for a session with an H100: the test suite (CUDA tests included), then the benchmark.
# Usage (repository root): bash benchmarks/gpu_check.sh [MIRROR]   -- logs and results go to ${OUT:-gpu-check}/,
# the data cache to ${DATA_DIR:-/tmp/mnist-bench-data} (kept out of OUT: it is ~150 MB).
# MIRROR defaults to $MNIST_MIRROR, then ../shared/data/mnist, then shared/data/mnist.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
MIRROR="${1:-${MNIST_MIRROR:-}}"
for candidate in "$MIRROR" ../shared/data/mnist shared/data/mnist; do
    if [ -n "$candidate" ] && [ -f "$candidate/train-images-idx3-ubyte.gz" ]; then MIRROR="$(cd "$candidate" && pwd)"; break; fi
done
[ -f "$MIRROR/train-images-idx3-ubyte.gz" ] || { echo "no MNIST mirror found; pass one as \$1" >&2; exit 2; }
export MNIST_MIRROR="$MIRROR" PREFECT_SERVER_ANALYTICS_ENABLED=false
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

{
    echo "## environment"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/environment.txt"

# The fast-path tests (CUDA graph vs eager, resume, bf16, torch.compile), then every other CUDA-marked test
# (that file is not run twice). The rest of the suite is device-independent and runs in CI; FULL=1 runs it here too.
"$PY" -m pytest tests/test_train_fast_path.py -v -rs 2>&1 | tee "$OUT/pytest-fast-path.txt"
fast_rc=${PIPESTATUS[0]}
"$PY" -m pytest -m "${FULL:+not e2e or }cuda" --ignore=tests/test_train_fast_path.py -q -rs 2>&1 \
    | tee "$OUT/pytest-cuda.txt"
all_rc=${PIPESTATUS[0]}
# Exit status 5: no test selected (every CUDA test may live in the file above): nothing failed.
[ "$all_rc" -eq 5 ] && all_rc=0

# 3 epochs x 2 rounds per side; the preset over seeds 0, 1, 2 in every variant; two flow runs.
"$PY" benchmarks/speed.py --mirror "$MIRROR" --data-dir "${DATA_DIR:-/tmp/mnist-bench-data}" --device cuda --epochs 3 --rounds 2 \
    --out "$OUT/speed-cuda.json" 2>&1 | tee "$OUT/benchmark.txt"
bench_rc=${PIPESTATUS[0]}
echo "pytest fast path rc=$fast_rc, pytest cuda rc=$all_rc, benchmark rc=$bench_rc" | tee -a "$OUT/benchmark.txt"
exit $(( fast_rc || all_rc || bench_rc ))
