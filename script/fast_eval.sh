#!/usr/bin/env bash
# Evaluate a run. With no arguments: the latest run of fast_train.sh (exps/fast_scan0/<newest with a checkpoint>).
#   -i, --input DIR     evaluate this run directory (alias --exp-dir) (env EXP_DIR)
#   --exp_name NAME     runs under exps/NAME_scanID/                 (env EXP_NAME,   default fast)
#   --scan_id ID        scan id of the run                           (env SCAN_ID,    default 0)
#   --timestamp TS      that run (exps/NAME_scanID/TS) instead of the newest one
#   --checkpoint C      latest or a step number                      (env CHECKPOINT, default latest)
#   --mc-resolution N   marching-cubes resolution (alias --resolution) (env MC_RESOLUTION, default 512)
#   --eval_rendering    render the views (the default; --no-rendering skips them)
#   --gpu N             CUDA device N (the original's flag); --device auto|cpu|cuda[:N] (env DEVICE, default auto)
#   other flags go to `pbidr eval` (e.g. --views all|1,9,17 --renderer mesh|sdf --band 3 --quiet)
# Writes DIR/eval/ (open DIR/eval/compare.png first).
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,12p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
EXP_DIR="${EXP_DIR:-}"; EXP_NAME="${EXP_NAME:-fast}"; SCAN_ID="${SCAN_ID:-0}"; TIMESTAMP=""
CHECKPOINT="${CHECKPOINT:-latest}"; RESOLUTION="${MC_RESOLUTION:-${RESOLUTION:-512}}"; DEVICE="${DEVICE:-auto}"; EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -i|--input|--exp-dir|--exp_dir) EXP_DIR="$2"; shift 2 ;;
        --exp_name) EXP_NAME="$2"; shift 2 ;;
        --scan_id) SCAN_ID="$2"; shift 2 ;;
        --timestamp) TIMESTAMP="$2"; shift 2 ;;
        --checkpoint) CHECKPOINT="$2"; shift 2 ;;
        --mc-resolution|--resolution) RESOLUTION="$2"; shift 2 ;;
        --eval_rendering) shift ;;
        --gpu) DEVICE="cuda:$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [ -z "$EXP_DIR" ]; then
    BASE="exps/${EXP_NAME}_scan${SCAN_ID}"
    if [ -n "$TIMESTAMP" ]; then
        EXP_DIR="$BASE/$TIMESTAMP"
    else
        # The newest run that holds a checkpoint (a run stopped before its first one cannot be evaluated).
        for dir in $(ls -d "$BASE"/*/ 2>/dev/null | sort -r); do
            if [ -f "$dir/checkpoints/latest.pt" ]; then EXP_DIR="${dir%/}"; break; fi
        done
        [ -n "$EXP_DIR" ] || { echo "fast_eval.sh: no run with a checkpoint under $BASE (run script/fast_train.sh first, or pass --exp-dir)" >&2; exit 2; }
    fi
fi
echo "[pbidr] evaluating $EXP_DIR"
# --overwrite: a rerun replaces the run's earlier eval/ (it only ever replaces an eval output)
exec pbidr eval --overwrite --input "$EXP_DIR" --checkpoint "$CHECKPOINT" --mc-resolution "$RESOLUTION" --device "$DEVICE" \
    ${EXTRA[@]+"${EXTRA[@]}"}
