# Sourced by the scripts: make sure .venv exists and holds the project, installing only what changed.
# PBIDR_PYTHON picks the interpreter that creates the venv (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PBIDR_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    echo "[pbidr] creating $VENV"
    "${PBIDR_PYTHON:-python3}" -m venv "$VENV"
fi
# Reinstall only when the dependency lists changed since the last successful install.
STAMP="$VENV/.pbidr-install-stamp"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] || ! "$PY" -c "import pbidr" 2>/dev/null; then
    echo "[pbidr] installing dependencies into $VENV (first run takes a few minutes)"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -r "$ROOT/requirements.txt"
    "$PY" -m pip install --quiet --no-deps -e "$ROOT"
    echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
