#!/usr/bin/env bash
# The main job on the built-in sample: set up .venv (first run only), then every stage in turn:
# sample -> preprocess (data/Test/scan0) -> train (confs/fast.conf) -> eval.
# Environment: DEVICE (auto), EVAL_VIEWS (views rendered by eval, default 1,5,9,13,17).
source "$(dirname "$0")/_env.sh"
T0=$(date +%s)
stage() { echo; echo "[pbidr] ---- $1 ----"; }
stage "preprocess (sample -> data/raw/0 -> data/Test/scan0)"
bash script/data_process.sh
T1=$(date +%s)
stage "train (confs/fast.conf)"
bash script/fast_train.sh --device "${DEVICE:-auto}"
T2=$(date +%s)
RUN="$(ls -d exps/fast_scan0/*/ | sort | tail -n 1)"; RUN="${RUN%/}"
stage "eval ($RUN)"
bash script/fast_eval.sh --exp-dir "$RUN" --device "${DEVICE:-auto}" --views "${EVAL_VIEWS:-1,5,9,13,17}"
T3=$(date +%s)
echo
echo "[pbidr] demo finished in $((T3 - T0)) s (preprocess $((T1 - T0)) s, train $((T2 - T1)) s, eval $((T3 - T2)) s)."
echo "  compare (open first)  $RUN/eval/compare.png"
echo "  detailed mesh         $RUN/eval/detailed.obj  (subdivided: $RUN/eval/detailed_subdivided.obj)"
echo "  decomposition         $RUN/eval/contact_sheet.png, metrics $RUN/eval/metrics.json"
echo "  input views           data/Test/scan0/views.png; training plots $RUN/plots/"
echo "  score vs ground truth pbidr score --mesh $RUN/eval/detailed.obj --sample data/raw/0"
