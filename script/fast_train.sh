#!/usr/bin/env bash
# Train on a scan directory. With no arguments: data/Test/scan0 with confs/fast.conf (the detail mode, CPU-sized).
#   --conf FILE       HOCON conf                              (env CONF,     default confs/fast.conf)
#   --preset NAME     a named conf instead: detail (= confs/fast.conf), paper (= confs/test.conf, the paper's, GPU)
#   -i, --input DIR   scan directory (instead of data/DATASET/scanSCAN_ID)
#   -o, --output DIR  run directory (instead of exps/NAME_scanID/TIMESTAMP)
#   --scan_id ID      scan id under data/DATASET              (env SCAN_ID,  default 0)
#   --dataset NAME    dataset folder under data/              (env DATASET,  default Test)
#   --nepoch N        epochs (one batch per view each)        (env NEPOCH)
#   --iters N         iterations instead of epochs            (env ITERS)
#   --gpu N           CUDA device N (the original's flag); --device auto|cpu|cuda[:N] (env DEVICE, default auto)
#   --exp_name NAME   runs go to exps/NAME_scanID/TIMESTAMP   (env EXP_NAME, default: the conf's name)
#   --resume [DIR]    continue DIR, or the latest run of this exp_name/scan
#   other flags go to `pbidr train` (e.g. --set train.batch_size=1024, --seed 1)
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,14p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
CONF="${CONF:-confs/fast.conf}"; SCAN_ID="${SCAN_ID:-0}"; DATASET="${DATASET:-Test}"; DEVICE="${DEVICE:-auto}"
NEPOCH="${NEPOCH:-}"; ITERS="${ITERS:-}"; EXP_NAME="${EXP_NAME:-}"; RESUME=""; EXTRA=()
PRESET=""; SCAN_DIR=""; RUN_DIR=""
while [ $# -gt 0 ]; do
    case "$1" in
        --conf) CONF="$2"; shift 2 ;;
        --preset) PRESET="$2"; shift 2 ;;
        -i|--input|--data) SCAN_DIR="$2"; shift 2 ;;
        -o|--output|--exp-dir) RUN_DIR="$2"; shift 2 ;;
        --scan_id) SCAN_ID="$2"; shift 2 ;;
        --dataset) DATASET="$2"; shift 2 ;;
        --nepoch) NEPOCH="$2"; shift 2 ;;
        --iters) ITERS="$2"; shift 2 ;;
        --gpu) DEVICE="cuda:$2"; shift 2 ;;
        --device) DEVICE="$2"; shift 2 ;;
        --exp_name) EXP_NAME="$2"; shift 2 ;;
        --resume) if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then RESUME="$2"; shift 2; else RESUME="latest"; shift; fi ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [ -n "$PRESET" ]; then
    case "$PRESET" in detail) CONF=confs/fast.conf ;; paper) CONF=confs/test.conf ;; pbidr-cpu) CONF=confs/fast_pbidr.conf ;;
        *) echo "fast_train.sh: --preset $PRESET: expected detail, paper or pbidr-cpu" >&2; exit 2 ;; esac
fi
EXP_NAME="${EXP_NAME:-$(basename "$CONF" .conf)}"
BASE="exps/${EXP_NAME}_scan${SCAN_ID}"
ARGS=(--input "${SCAN_DIR:-data/$DATASET/scan$SCAN_ID}" --device "$DEVICE")
[ -n "$NEPOCH" ] && ARGS+=(--nepoch "$NEPOCH")
[ -n "$ITERS" ] && ARGS+=(--iters "$ITERS")
if [ -n "$RESUME" ]; then
    RUN="$RESUME"
    if [ "$RESUME" = "latest" ] && [ -n "$RUN_DIR" ]; then RUN="$RUN_DIR"; fi
    if [ "$RUN" = "latest" ]; then
        RUN="$(ls -d "$BASE"/*/ 2>/dev/null | sort | tail -n 1)"
        [ -n "$RUN" ] || { echo "fast_train.sh: no run under $BASE to resume" >&2; exit 2; }
    fi
    exec pbidr train --output "${RUN%/}" --resume "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
fi
RUN="${RUN_DIR:-$BASE/$(date +%Y_%m_%d_%H_%M_%S)}"
exec pbidr train --output "$RUN" --conf "$CONF" "${ARGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"}
