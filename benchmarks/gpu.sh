#!/usr/bin/env bash
# The GPU check as one prepared script: the GPU-relevant tests; the training and evaluation
# step's throughput for the nn.RNN scan, cuDNN and PyTorch's nn.LSTM (cuDNN) in the same
# run; the `default` preset trained end to end. The GPU model, driver and versions are
# recorded beside every figure, in gpu/results/ (an ignored folder).
#
#   bash benchmarks/gpu.sh --stage   # before: copies the four MNIST files into gpu/mnist
#   bash benchmarks/gpu.sh           # on the GPU machine: everything
#   bash benchmarks/gpu.sh --dry     # on a CPU: tiny sizes, lstm_ref in place of cuDNN
#
# The GPU machine has no network and no TensorFlow: the data is read from the IDX files in
# gpu/mnist, an ignored folder that travels with the checkout. --dry exercises every step
# but the cuDNN call itself (RNNJAX_CUDNN=reference: jax.experimental.rnn.lstm_ref).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${RNNJAX_GPU_OUT:-gpu/results}
DATA=${RNNJAX_GPU_DATA:-gpu/mnist}
PY=${PYTHON:-python}
case "${1:-}" in
  --stage)
    src=${RNNJAX_MANUAL_DIR:-../shared/data/mnist}
    mkdir -p gpu/mnist && cp "$src"/*-ubyte.gz gpu/mnist/ && ls -l gpu/mnist
    exit $?;;
  --dry)
    export RNNJAX_CUDNN=reference JAX_PLATFORMS=cpu
    TESTS=(tests/test_cudnn.py -k "packing or lstm_ref")
    SETTINGS=small; WINDOWS=(--windows 1 --window-seconds 0.05)
    TRAIN=(--preset tiny --epochs 1 --rnn-kernel cudnn);;
  "")
    TESTS=(tests/test_cudnn.py tests/test_models.py tests/test_steps.py)
    SETTINGS=tutorial,small,eval256,eval128,seq; WINDOWS=(--windows 5 --window-seconds 1)
    TRAIN=();;
  *) echo "usage: bash benchmarks/gpu.sh [--stage|--dry]" >&2; exit 2;;
esac
mkdir -p "$OUT"
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || { echo "error: no MNIST files in $DATA; run" \
  "bash benchmarks/gpu.sh --stage first (or set RNNJAX_GPU_DATA)" >&2; exit 1; }
failed=0
step() {  # step NAME COMMAND...: runs it, its output in $OUT/NAME.txt, and says how it ended
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s ($OUT/$name.txt)" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || failed=1
}

: > "$OUT/summary.txt"
{
  date -u +"%Y-%m-%d %H:%M:%S UTC"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "GPU: none (no nvidia-smi)"
  $PY - <<'PY'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "torch"):
  try:
    print(name, importlib.import_module(name).__version__)
  except ImportError:
    print(name, "absent")
import jax
print("backend", jax.default_backend(), "devices", jax.devices())
from rnnjax import cudnn
print("cuDNN path:", cudnn.status()[1])
PY
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if $PY -c "import pytest" 2>/dev/null; then
  step tests $PY -m pytest -q -p no:cacheprovider "${TESTS[@]}"
else
  echo "tests: skipped, pytest is not installed here" | tee -a "$OUT/summary.txt"
fi
compare=(); $PY -c "import torch" 2>/dev/null && compare=(--compare-torch)
for kernel in xla cudnn; do
  step "throughput_$kernel" $PY benchmarks/throughput.py --settings "$SETTINGS" \
    --rnn-kernel "$kernel" "${compare[@]}" "${WINDOWS[@]}"
done
rm -rf "$OUT/train_workdir"
step train $PY experiments/mnist_lstm.py --data-source idx --manual-dir "$DATA" \
  --workdir "$OUT/train_workdir" --no-progress "${TRAIN[@]}"
tail -n 3 "$OUT"/throughput_*.txt "$OUT/train.txt"
exit $failed
