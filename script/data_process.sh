#!/usr/bin/env bash
# Preprocess: raw textured mesh -> IDR scan directory data/DATASET/scanSCAN_ID.
# With no arguments: the built-in sample -> data/raw/0 (if absent) -> data/Test/scan0.
#   -i RAW        raw mesh file or folder holding mesh.*      (env RAW,      default data/raw/0)
#   -o SCAN_ID    scan id (the original's -o)                  (env SCAN_ID,  default 0)
#   -d DATASET    dataset folder under data/                   (env DATASET,  default Test)
#   --output DIR  the scan directory itself, instead of data/DATASET/scanSCAN_ID
#   any other flag goes to `pbidr preprocess` (--units mm|cm|m --device D --yaw 17 --yaw-angle 45 --res 1024 ...)
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help)
    sed -n '2,8p' "$0"
    VENV_PY="${PBIDR_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}/bin/python"
    if [ -x "$VENV_PY" ]; then echo; "$VENV_PY" -m pbidr.commands preprocess --help
    else echo "(the flags of pbidr preprocess: pbidr preprocess --help, once .venv is set up)"; fi
    exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
RAW="${RAW:-data/raw/0}"; SCAN_ID="${SCAN_ID:-0}"; DATASET="${DATASET:-Test}"; SCAN_DIR=""
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        -i|--input) RAW="$2"; shift 2 ;;
        -o|--scan_id) SCAN_ID="$2"; shift 2 ;;
        -d|--dataset) DATASET="$2"; shift 2 ;;
        --output) SCAN_DIR="$2"; shift 2 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
if [ "$RAW" = "data/raw/0" ] && [ ! -e data/raw/0/mesh.obj ]; then
    echo "[pbidr] writing the built-in sample to data/raw/0"
    pbidr sample --output data/raw/0
fi
# --overwrite: a rerun replaces the scan it wrote before (a folder holding anything else is still refused)
pbidr preprocess --overwrite --input "$RAW" --output "${SCAN_DIR:-data/$DATASET/scan$SCAN_ID}" ${EXTRA[@]+"${EXTRA[@]}"}
