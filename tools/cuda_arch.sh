#!/usr/bin/env bash
# Print the CUDA compute capability to build Caffe for: that of each visible GPU (e.g. "90", or "80 90" on a
# mixed machine), else 90 (H100) when no GPU or no nvidia-smi is present (building on a machine without one).
set -euo pipefail
caps=""
if command -v nvidia-smi >/dev/null 2>&1; then
  caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
    | tr -d ' .' | grep -E '^[0-9]+$' | sort -un | tr '\n' ' ' | sed 's/ $//') || caps=""
fi
echo "${caps:-90}"
