#!/usr/bin/env bash
# Create the project's virtual environment (`make env`): the pinned packages, this repository installed in
# editable mode (every top-level folder imports as a package from anywhere), and our pycaffe registered
# through a .pth file (the usual way to add a package built outside pip; `make` puts another build first on
# PYTHONPATH for GPU=1 and CAFFE_ROOT).
# --requirements-only: the pinned packages and the pycaffe registration without the repository itself (the
# Dockerfile's early layer, before the code is copied in).
set -euo pipefail
BASE=$1 VENV=$2 ONLY=${3:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v "$BASE" >/dev/null || { echo "error: '$BASE' not found; install python3 (make deps) or pass PYTHON_BASE=" >&2; exit 1; }
"$BASE" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
  || { echo "error: $BASE is older than Python 3.10" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV with $("$BASE" --version)"
  "$BASE" -m venv "$VENV" || { echo "error: venv creation failed; on Debian install python3-venv (make deps)" >&2; exit 1; }
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -r "$ROOT/requirements.txt"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$SITE/cellfcn.pth"  # the repository path of earlier versions: the editable install replaces it
printf '%s\n' "$ROOT/.caffe/lib/python3/dist-packages" >"$SITE/pycaffe.pth"
[ "$ONLY" = --requirements-only ] && exit 0
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
touch "$VENV/.stamp"
echo "Python environment ready: $VENV"
