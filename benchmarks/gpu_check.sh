#!/usr/bin/env bash
# The prepared GPU check (issue 15): the CUDA tests, the CUDA step profile, the fused Triton step against the graph
# step (issue 33), then the speed benchmark's seed comparison and fast98 preset. Logs and results go to
# ${OUT:-gpu-check}/.
#
#   bash benchmarks/gpu_check.sh [MIRROR]
#
# Only mnist_core runs here (benchmarks/gpu_setup.sh: mirror, Python, pydantic's wheels from .whl/ where missing);
# the flow needs Prefect: benchmarks/gpu_flow_check.sh. PROFILE=0 skips the step profile, FUSED=0 the fused step;
# SECTIONS="preset" runs only that part of the benchmark.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DEFAULT=gpu-check WHEELS=.whl NEEDS=pydantic
source benchmarks/gpu_setup.sh
DATA_DIR="${DATA_DIR:-/tmp/mnist-bench-data}"

{
    echo "## environment"; date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PY" -c "import torch, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(), 'pydantic', pydantic.VERSION)"
    grep -m1 "model name" /proc/cpuinfo; nproc
} 2>&1 | tee "$OUT/environment.txt"

# The CUDA tests: the files that need no Prefect (the CPU tests in them run on CI). grep: torch.compile's DEBUG
# log floods a failing test's captured log.
timeout "${TESTS_TIMEOUT_S:-150}" "$PY" -m pytest -p no:cacheprovider -m cuda -v -rs --durations=10 \
    tests/training/test_train_fast_path.py tests/training/test_backprop.py tests/training/test_cuda_pipeline.py \
    tests/training/test_fused.py 2>&1 \
    | grep -v "^DEBUG    torch" | tee "$OUT/pytest-cuda.txt"
tests_rc=${PIPESTATUS[0]}

profile_rc=0
if [ "${PROFILE:-1}" = 1 ]; then
    timeout "${PROFILE_TIMEOUT_S:-90}" "$PY" benchmarks/cuda_step_profile.py --mirror "$MIRROR" --data-dir "$DATA_DIR" \
        --out "$OUT/step-profile-cuda.json" 2>&1 | tee "$OUT/step-profile.txt"
    profile_rc=${PIPESTATUS[0]}
fi

# The fused step: three steps against the written-out step, then seconds per epoch at the seed's settings, side by
# side with the captured graph step, and kernels per step (benchmarks/fused_step.py).
fused_rc=0
if [ "${FUSED:-1}" = 1 ]; then
    timeout "${FUSED_TIMEOUT_S:-180}" "$PY" benchmarks/fused_step.py --mirror "$MIRROR" \
        --out "$OUT/fused-step-cuda.json" 2>&1 | tee "$OUT/fused-step.txt"
    fused_rc=${PIPESTATUS[0]}
fi

# The seed's settings: 3 epochs x 2 alternated rounds per side; the preset over seeds 0, 1, 2 in every variant.
timeout "${BENCH_TIMEOUT_S:-300}" "$PY" benchmarks/speed.py --mirror "$MIRROR" --data-dir "$DATA_DIR" --device cuda \
    --epochs 3 --rounds 2 --sections ${SECTIONS:-compare preset} --out "$OUT/speed-cuda.json" 2>&1 | tee "$OUT/benchmark.txt"
bench_rc=${PIPESTATUS[0]}
echo "pytest cuda rc=$tests_rc, step profile rc=$profile_rc, fused step rc=$fused_rc, benchmark rc=$bench_rc" \
    | tee -a "$OUT/benchmark.txt"
exit $(( tests_rc || profile_rc || fused_rc || bench_rc ))
