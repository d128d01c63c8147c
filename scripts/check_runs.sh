#!/usr/bin/env bash
# The md5 of three short runs' metrics.csv (columns epoch, chars, train/valid/test loss, lr: not
# the timings), the check that a change to the machinery moved no number it was not meant to.
#
#   scripts/check_runs.sh [OUT_DIR]     # prints one "md5  name" line per run
#
# The runs (LSTM2-64WP config, hidden 64, the first 300k bytes of War and Peace, 30k chars):
#   baseline   the RPU baseline at batch 1 (the paper's setting: the compiled time loops)
#   sto_asym   up_down 0.05 at batch 8 with stochastic rounding both ways (the Python loops)
#   nm_bound   noise management off, backward ADC bound 3 (the fallbacks, bound management)
# Compare the lines before and after a change (e.g. run it on a worktree of the old commit), on
# one machine: another CPU gives other md5s.
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
common=(--config experiments/lstm2-64wp-rpu.yaml --set data.max_bytes=300000
        --set train.max_chars=30000 --set model.hidden=64 --set train.eval_every_chars=10000
        --set data.eval_chars=20000)
run() {
    local name=$1; shift
    rpusim train "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1
    echo "$(cut -d, -f1-5,8 "$out/$name/metrics.csv" | md5sum | cut -d' ' -f1)  $name"
}
run baseline
run sto_asym --set train.batch_size=8 --set rpu.device.up_down=0.05 \
    --set rpu.forward.inp_sto_round=true --set rpu.backward.inp_sto_round=true
run nm_bound --set rpu.forward.noise_management=none --set rpu.backward.noise_management=none \
    --set rpu.backward.out_bound=3
