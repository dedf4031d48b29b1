#!/usr/bin/env bash
# λ sweep over 1e-4 … 10 plus the GCV choice, for one experiment (default clm), then its table and figure.
# Resumable: re-running skips finished cells.  Usage: sweeps/lambda.sh [clm|reasoning] [hydra overrides...]
set -euo pipefail
exp=${1:-clm}; shift || true
python -m dume_exp +experiment="$exp" +sweep=lambda "$@"
python -m dume_exp.report "results/sweeps/lambda/$exp/cells" --out "results/sweeps/lambda/$exp"
