#!/usr/bin/env bash
# Create the project's virtual environment (`make env`): pinned packages, and a .pth file that puts the repo
# and our pycaffe on sys.path, so `import caffe`, `import simcep_py` work without exporting anything.
set -euo pipefail
BASE=$1 VENV=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v "$BASE" >/dev/null || { echo "env: '$BASE' not found; install python3 (make deps) or pass PYTHON_BASE=" >&2; exit 1; }
"$BASE" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
  || { echo "env: $BASE is older than Python 3.10" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "Creating $VENV with $("$BASE" --version)"
  "$BASE" -m venv "$VENV" || { echo "env: venv creation failed; on Debian install python3-venv (make deps)" >&2; exit 1; }
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$ROOT" "$ROOT/.caffe/lib/python3/dist-packages" >"$SITE/cellfcn.pth"
touch "$VENV/.stamp"
echo "Python environment ready: $VENV"
