#!/usr/bin/env bash
# Expert-count sweep (2..D experts; exact vs fast statistics), then its table and figure.
# Usage: sweeps/experts.sh [clm|reasoning] [--per-count N] [hydra overrides...]
set -euo pipefail
exp=${1:-clm}; shift || true
python -m dume_exp.sweeps experts --experiment "$exp" "$@"
python -m dume_exp.report "results/sweeps/experts/$exp/cells" --out "results/sweeps/experts/$exp"
