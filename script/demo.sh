#!/usr/bin/env bash
# The main job on the built-in sample: set up .venv (first run only), then every stage in turn.
source "$(dirname "$0")/_env.sh"
T0=$(date +%s)
bash script/data_process.sh "$@"
echo
echo "[pbidr] demo finished in $(( $(date +%s) - T0 )) s. Outputs:"
echo "  raw sample mesh    data/raw/0/mesh.obj (ground truth: data/raw/0/gt_detailed.obj)"
echo "  scan (IDR format)  data/Test/scan0/{image,mask,cameras.npz,mesh.obj}"
echo "  input views        data/Test/scan0/views.png"
