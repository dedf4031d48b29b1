#!/usr/bin/env bash
# The GPU check, for a machine with one NVIDIA GPU: installs (make install), builds the embedded reasoning zoo on the
# GPU, runs the reasoning experiment there (seed 0; dense experts, weight averaging, oracle and DUME) and prints its
# table beside the committed CPU table with the differences; then refits DUME without a router bias, exports it to
# Mixtral with the CLI and, where vLLM is installed in .venv, scores the exportable strategies through
# eval.backend=vllm, whose parity gate runs before any vLLM score is accepted, beside the in-memory scores.
# Work and caches go to $GPU_CHECK_DIR (default .gpu_check/); rerunning reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU visible (nvidia-smi)" >&2; exit 1; }
make install
PY=.venv/bin/python
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check: this torch build sees no CUDA device")'
WORK=${GPU_CHECK_DIR:-.gpu_check}
export DUME_CACHE=${DUME_CACHE:-$PWD/$WORK/cache} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    WANDB_MODE=offline
app=("$PY" -m dume_exp +experiment=reasoning seeds=null device=cuda zoo.device=cuda logger=none progress=false)
step() { echo; echo "== gpu_check: $* ($(date +%T))"; }

step "zoo on the GPU, then the reasoning experiment"
"${app[@]}" "strategy=[dense_expert,weight_average,oracle,dume]" results_dir="$WORK/gpu" hydra.run.dir="$WORK/run_gpu"
"$PY" -m dume_exp.report --compare results/reasoning/table.csv "$WORK/gpu/reasoning/table.csv"

step "DUME without a router bias, saved and exported to Mixtral"
"${app[@]}" "strategy=[dense_expert,weight_average,dume]" router.bias=false save_models=[dume] \
    results_dir="$WORK/nobias" hydra.run.dir="$WORK/run_nobias"
rm -rf "$WORK/mixtral"
"$PY" -m dume_exp.export "$WORK/run_nobias/models/dume" "$WORK/mixtral" --arch mixtral
ls -l "$WORK/mixtral"

if "$PY" -c 'import vllm' 2>/dev/null; then
    step "eval.backend=vllm: export, parity gate (its report is logged per candidate), lm-eval's vLLM model"
    "${app[@]}" "strategy=[dense_expert,weight_average,dume]" router.bias=false eval.backend=vllm \
        results_dir="$WORK/vllm" hydra.run.dir="$WORK/run_vllm"
    "$PY" -m dume_exp.report --compare "$WORK/nobias/reasoning/table.csv" "$WORK/vllm/reasoning/table.csv"
else
    step "vLLM is not installed in .venv: the vLLM parity gate is skipped (install it with .venv/bin/pip install vllm,"
    echo "which brings the torch build it needs, then rerun this script)"
fi
step "done"
