#!/usr/bin/env bash
# Set up .venv (first run only) and run the test suite. Extra arguments go to pytest (e.g. -k train -x).
# --help before _env.sh: printing help must not create or install the venv
for a in "$@"; do case "$a" in -h|--help) sed -n '2,2p' "$0"; exit 0 ;; esac; done
source "$(dirname "$0")/_env.sh"
# The Ray engine of `pbidr batch` is an optional extra, but the suite tests it on a local Ray.
"$PY" -c "import ray" 2>/dev/null || "$PY" -m pip install --quiet -r "$ROOT/requirements-ray.txt"
# So is the viewer of `pbidr view` (viser, fast-simplification); its page is tested in Chromium when there
# is one (.ci/run installs Debian's and sets PBIDR_REQUIRE_BROWSER=1, so that there the test cannot skip).
"$PY" -c "import viser, fast_simplification" 2>/dev/null || "$PY" -m pip install --quiet -r "$ROOT/requirements-view.txt"
# Blender as a module (bpy, Python 3.11 only) opens the eval outputs in test_blender.py: about a minute
# to fetch and install once (374 MB wheel), about 10 s of tests. --no-deps: see requirements-blender.txt.
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' && ! "$PY" -c "import bpy" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-deps -r "$ROOT/requirements-blender.txt"
fi
exec "$PY" -m pytest code/tests "$@"
