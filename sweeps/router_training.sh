#!/usr/bin/env bash
# Compute-matched router training: one BTX and one DUME+ training of 200 steps, scored at steps 0, 25, 50, 100 and
# 200, against DUME, for one experiment (default clm); then its tables and the curve
# results/figures/router_training_<experiment>.png.
# Resumable: re-running skips a finished cell.  Usage: sweeps/router_training.sh [clm|reasoning] [hydra overrides...]
set -euo pipefail
exp=${1:-clm}; shift || true
python -m dume_exp +experiment="$exp" +sweep=router_training "$@"
python -m dume_exp.report "results/sweeps/router_training/$exp/cells" --out "results/sweeps/router_training/$exp"
