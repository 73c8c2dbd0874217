#!/usr/bin/env bash
# The lines of a build log that say why the build failed (tools/build_caffe.sh prints them on failure): each
# "CMake Error" with its indented message, each compiler or linker error with the two lines after it (gcc's
# source line and caret). The log's last lines when none match. Usage: tools/build_errors.sh LOG
set -euo pipefail
[ $# = 1 ] || { echo "usage: tools/build_errors.sh LOG" >&2; exit 2; }
[ -f "$1" ] || { echo "error: no such log: $1" >&2; exit 1; }

lines=$(sed -E 's/\x1b\[[0-9;]*[mK]//g' "$1" | awk '
  /^CMake Error/                       { block = 1; print; next }
  block && (/^  / || /^$/)             { print; next }
                                       { block = 0 }
  after > 0                            { print; after--; next }
  /: (fatal )?error: |^error: |undefined reference to|(^|\/)ld: |^collect2: / { print; after = 2 }
' | cat -s | head -n 60)
if [ -n "$lines" ]; then printf '%s\n' "$lines"; else tail -n 12 "$1"; fi
