#!/usr/bin/env bash
# The main job on the built-in sample: set up .venv (first run only), then every stage in turn:
# sample -> preprocess (data/Test/scan0) -> train (confs/fast.conf) -> eval.
#   --photo [PATH]  start from a face photo instead (default: scikit-image's astronaut portrait):
#                   photo -> data/raw/photo -> preprocess (data/Test/scan1) -> train -> eval.
#                   The first use installs the photo extra (MediaPipe 0.10.14, docs/photo.md) into .venv.
# Environment: DEVICE (auto), EVAL_VIEWS (views rendered by eval, default 1,9,17).
PHOTO=""; USE_PHOTO=0
while [ $# -gt 0 ]; do
    case "$1" in
        --photo) USE_PHOTO=1
                 if [ $# -gt 1 ] && [ "${2#-}" = "$2" ]; then PHOTO="$2"; shift 2; else shift; fi ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
# _env.sh moves to the repository root: make a relative photo path absolute first.
case "$PHOTO" in ""|/*) ;; *) PHOTO="$PWD/$PHOTO" ;; esac
source "$(dirname "$0")/_env.sh"
T0=$(date +%s)
stage() { echo; echo "[pbidr] ---- $1 ----"; }
SCAN_ID=0
if [ "$USE_PHOTO" = 1 ]; then
    if ! "$PY" -c "import mediapipe.python.solutions.face_mesh" 2>/dev/null; then
        echo "[pbidr] installing the photo extra (MediaPipe 0.10.14, see docs/photo.md) into $VENV"
        "$PY" -m pip install --quiet -r requirements.txt -r requirements-photo.txt
        "$PY" -m pip install --quiet --no-deps mediapipe==0.10.14
    fi
    if [ -z "$PHOTO" ]; then
        PHOTO=data/photos/astronaut.png
        if [ ! -f "$PHOTO" ]; then
            mkdir -p data/photos
            "$PY" -c "import sys; from skimage import data; from PIL import Image; Image.fromarray(data.astronaut()).save(sys.argv[1])" "$PHOTO"
        fi
    fi
    SCAN_ID=1
    stage "photo ($PHOTO -> data/raw/photo)"
    pbidr photo --overwrite --image "$PHOTO" --output data/raw/photo
    stage "preprocess (data/raw/photo -> data/Test/scan$SCAN_ID)"
    bash script/data_process.sh -i data/raw/photo -o "$SCAN_ID"
else
    stage "preprocess (sample -> data/raw/0 -> data/Test/scan0)"
    bash script/data_process.sh
fi
T1=$(date +%s)
stage "train (confs/fast.conf)"
bash script/fast_train.sh --scan_id "$SCAN_ID" --device "${DEVICE:-auto}"
T2=$(date +%s)
RUN="$(ls -d "exps/fast_scan$SCAN_ID"/*/ | sort | tail -n 1)"; RUN="${RUN%/}"
stage "eval ($RUN)"
bash script/fast_eval.sh --input "$RUN" --device "${DEVICE:-auto}" --views "${EVAL_VIEWS:-1,9,17}"
T3=$(date +%s)
echo
echo "[pbidr] demo finished in $((T3 - T0)) s (preprocess $((T1 - T0)) s, train $((T2 - T1)) s, eval $((T3 - T2)) s)."
echo "  compare (open first)  $RUN/eval/compare.png"
echo "  detailed mesh         $RUN/eval/detailed.obj  (subdivided: $RUN/eval/detailed_subdivided.obj)"
echo "  decomposition         $RUN/eval/contact_sheet.png, metrics $RUN/eval/metrics.json"
echo "  input views           data/Test/scan$SCAN_ID/views.png; training plots $RUN/plots/"
if [ "$USE_PHOTO" = 1 ]; then
    echo "  photo fit             data/raw/photo/landmarks.png (from $PHOTO)"
else
    # eval scored detailed.obj against the sample's ground truth (metrics.json "score").
    "$PY" - "$RUN/eval/metrics.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1])).get("score")
if s:
    print(f"  score vs ground truth normal-error ratio {s['normal_error_ratio']:.3f} (coarse mesh = 1, lower is better), "
          f"displacement correlation {s['displacement_correlation']:.3f}, RMS {s['displacement_rms_mm']:.3f} mm, "
          f"albedo leak {s['albedo_leak']:.2f} (about 1 = none)")
PYEOF
    echo "  re-score any mesh    pbidr score --mesh $RUN/eval/detailed.obj --sample data/raw/0"
fi
