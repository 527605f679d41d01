#!/usr/bin/env bash
# `pbidr batch` benchmark: 4 built-in samples through the local engine and the Ray engine, in one run
# (pbidr bench batch; writes bench/batch.json and prints a markdown table with the matmul rate).
#   --quick          2 subjects, 30 iterations (a smoke run)
#   other flags go to the benchmark (--subjects N --iters N --res N --gpus 1,0.5 --device D --workdir DIR --json FILE)
# Each run needs a fresh --workdir (default bench/batch-<date-time>).
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,6p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
"$PY" -c "import ray" 2>/dev/null || "$PY" -m pip install --quiet -r "$ROOT/requirements-ray.txt"
ARGS=(--workdir "bench/batch-$(date +%Y%m%d-%H%M%S)")
for a in "$@"; do
    case "$a" in
        --quick) ARGS+=(--subjects 2 --iters 30 --json bench/batch_quick.json) ;;
        *) ARGS+=("$a") ;;
    esac
done
exec pbidr bench batch "${ARGS[@]}"
