#!/usr/bin/env bash
# The real flow on a GPU machine, Prefect included: `python flows/mnist.py --device cuda` on Prefect's temporary
# server, the same command again (nothing changed: it must stop as Unchanged), then `mnist predict` with the
# champion on the 10,000 test digits. Logs go to ${OUT:-gpu-flow-check}/.
#
#   bash benchmarks/gpu_flow_check.sh [MIRROR]
#
# Setup (mirror, Python, Prefect's whole dependency closure for CPython 3.12 from .whl-prefect/ where Prefect is
# missing, GPU_CHECK_OFFLINE): benchmarks/gpu_setup.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DEFAULT=gpu-flow-check WHEELS=.whl-prefect NEEDS=prefect
source benchmarks/gpu_setup.sh
WORK="${WORK:-$(mktemp -d /tmp/mnist-gpu-flow.XXXXXX)}"
export PREFECT_HOME="$WORK/prefect-home"
FLAGS=(--device "${DEVICE:-cuda}" --data-dir "$WORK/data" --output-dir "$WORK/runs")

"$PY" -c "import prefect, torch; print('prefect', prefect.__version__, 'torch', torch.__version__)" | tee "$OUT/flow.txt"
for attempt in 1 2; do
    echo "## python flows/mnist.py ${FLAGS[*]} (run $attempt)" | tee -a "$OUT/flow.txt"
    started=$(date +%s%N)
    "$PY" flows/mnist.py "${FLAGS[@]}" >>"$OUT/flow.txt" 2>&1
    rc=$?
    echo "run $attempt: exit $rc, $(( ($(date +%s%N) - started) / 1000000 )) ms wall" | tee -a "$OUT/flow.txt"
    [ "$rc" -eq 0 ] || exit "$rc"
done
grep -q "^Not retrained: nothing changed" "$OUT/flow.txt" || { echo "run 2 did not stop as Unchanged" >&2; exit 1; }
grep -E "accuracy|epoch [0-9]|environment|Unchanged|nothing changed|champion" "$OUT/flow.txt" | tail -20
card=$(ls "$WORK"/runs/*/model_card.json | head -1)
cp "$card" "$OUT/model_card.json"
"$PY" -m mnist_core predict "$MIRROR/t10k-images-idx3-ubyte.gz" --output-dir "$WORK/runs" \
    --output "$OUT/predictions.csv" >"$OUT/predict.txt" 2>&1
predict_rc=$?
echo "mnist predict: exit $predict_rc" | tee -a "$OUT/predict.txt"
tail -5 "$OUT/predict.txt"
exit "$predict_rc"
