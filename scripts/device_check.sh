#!/usr/bin/env bash
# The GPU checks of a session that is lent a GPU machine, in one short command (a few minutes).
#
# That machine has python3 with torch, triton, numba, numpy, matplotlib, PyYAML and tqdm, but no
# pydantic and no network. Before the call, in the repo root here (x86-64, Python 3.12 there):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions
#
# then run this script through the device tool with `carry: [".whl"]`:
#
#   bash scripts/device_check.sh        # writes $OUT/gpu_check.txt, $OUT/bench_gpu.json, ...
#
# 1. the Triton twins against the torch references on the GPU (scripts/gpu_check.py);
# 2. `rpusim bench --device cuda --quick` (2x128 rows; drop --quick if time allows);
# 3. a short RPU training run on the GPU, to see the whole loop run there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/gpu.txt"

status=0
timeout 240 python3 scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.txt" || status=1
timeout 240 python3 -m rpusim bench --device cuda --quick --json "$OUT/bench_gpu.json" 2>&1 \
    | tee "$OUT/bench_gpu.txt" || status=1
timeout 120 python3 -m rpusim train --config experiments/lstm2-64wp-rpu.yaml --out /tmp/gpu_run \
    --no-progress --set train.device=cuda --set train.max_chars=20000 \
    --set train.eval_every_chars=10000 --set data.eval_chars=5000 2>&1 \
    | tee "$OUT/train_gpu.txt" || status=1
cp /tmp/gpu_run/metrics.csv "$OUT/train_gpu_metrics.csv" 2>/dev/null || status=1
exit $status
