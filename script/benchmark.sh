#!/usr/bin/env bash
# Every benchmark in one run on the built-in sample; writes bench/results.json and prints markdown tables.
#   --quick   shrink every size (about a minute; CI-sized smoke run); other flags go to `pbidr bench all` (--device D)
# Sections: end to end (sample, preprocess, train with confs/fast_mlp.conf, eval), render (17 views at 1024^2,
# median of 3), training speed per tracer mode with FLOPs vs this machine's matmul rate, marching cubes,
# and quality (pbidr score of detailed.obj / detailed_subdivided.obj against the sample's ground truth).
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,6p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
OUT=bench/results.json
ARGS=()
for a in "$@"; do
    case "$a" in
        --quick) ARGS+=(--quick); OUT=bench/results_quick.json ;;
        *) ARGS+=("$a") ;;
    esac
done
exec pbidr bench all --json "$OUT" ${ARGS[@]+"${ARGS[@]}"}
