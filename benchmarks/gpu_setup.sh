# Sourced by gpu_check.sh and gpu_flow_check.sh (after `cd` to the repository root, with OUT_DEFAULT, WHEELS and
# NEEDS set): the output folder, the MNIST mirror, the Python, and the wheels a bare GPU machine lacks.
#
# MIRROR ($1) defaults to $MNIST_MIRROR, then ../shared/data/mnist, then .devdata/mnist (a copy carried to a machine
# that has no ../shared). Where `import $NEEDS` fails (the device tool's image), the wheels in $WHEELS/ are
# installed to /tmp/site, and its scripts put on PATH. GPU_CHECK_OFFLINE=1 routes the official dataset mirrors to
# a closed local port (loopback stays direct): on a machine whose network drops packets each of them would
# otherwise cost the 30 s fetch timeout before the local mirror is tried.
OUT="${OUT:-$OUT_DEFAULT}"
mkdir -p "$OUT"
MIRROR="${1:-${MNIST_MIRROR:-}}"
for candidate in "$MIRROR" ../shared/data/mnist .devdata/mnist; do
    if [ -n "$candidate" ] && [ -f "$candidate/train-images-idx3-ubyte.gz" ]; then MIRROR="$(cd "$candidate" && pwd)"; break; fi
done
[ -f "$MIRROR/train-images-idx3-ubyte.gz" ] || { echo "no MNIST mirror found; pass one as \$1" >&2; exit 2; }
export MNIST_MIRROR="$MIRROR" PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
if [ "${GPU_CHECK_OFFLINE:-0}" = 1 ]; then
    export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 no_proxy=127.0.0.1,localhost
fi
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import $NEEDS" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "$NEEDS is missing and $WHEELS/ could not be installed" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
