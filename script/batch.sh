#!/usr/bin/env bash
# Many subjects through preprocess -> train -> eval (`pbidr batch`, docs/batch.md). With no arguments: writes the
# built-in sample with seeds 0..3 to data/raw/batch/face0..3 (once) and runs them with confs/fast.conf into exps/batch.
#   -i, --input DIR_OR_LIST  subjects: subfolders holding mesh.*, mesh files, or a list file (env INPUTS; alias --inputs)
#   -o, --output DIR      output folder; rerun the same command to finish what is missing (env OUT, default exps/batch; alias --out)
#   --conf C              train conf                                                        (env CONF,   default confs/fast.conf)
#   --engine local|ray    local: one subject after another; ray: Ray tasks                  (env ENGINE, default local)
#   --address ADDR        ray: join this cluster (default: start a local Ray)               (env RAY_ADDRESS)
#   --gpu N               CUDA device N for the local engine (the other scripts' flag)
#   other flags go to `pbidr batch` (e.g. --gpus-per-job 0.5 --cpus-per-job 4 --retries 1 --stages preprocess,train
#   --iters 1000 --res 512 --mc-resolution 256 --set train.batch_size=512)
# --engine ray installs the optional Ray extra (requirements-ray.txt) on first use.
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,12p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
INPUTS="${INPUTS:-}"; OUT="${OUT:-exps/batch}"; CONF="${CONF:-confs/fast.conf}"; ENGINE="${ENGINE:-local}"; EXTRA=()
ADDRESS="${RAY_ADDRESS:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        -i|--input|--inputs) INPUTS="$2"; shift 2 ;;
        -o|--output|--out) OUT="$2"; shift 2 ;;
        --conf) CONF="$2"; shift 2 ;;
        --engine) ENGINE="$2"; shift 2 ;;
        --address) ADDRESS="$2"; shift 2 ;;
        --gpu) EXTRA+=(--device "cuda:$2"); shift 2 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [ -z "$INPUTS" ]; then
    INPUTS="data/raw/batch"
    for seed in 0 1 2 3; do
        [ -f "$INPUTS/face$seed/sample.json" ] || pbidr sample --output "$INPUTS/face$seed" --seed "$seed"
    done
fi
if [ "$ENGINE" = "ray" ]; then
    "$PY" -c "import ray" 2>/dev/null || "$PY" -m pip install --quiet -r "$ROOT/requirements-ray.txt"
    [ -z "$ADDRESS" ] || EXTRA+=(--address "$ADDRESS")
fi
exec pbidr batch --input "$INPUTS" --output "$OUT" --conf "$CONF" --engine "$ENGINE" "${EXTRA[@]}"
