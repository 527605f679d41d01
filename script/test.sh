#!/usr/bin/env bash
# Set up .venv (first run only) and run the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
exec "$PY" -m pytest code/tests "$@"
