#!/usr/bin/env bash
# Run one pipeline stage and record its wall time: stage_time.sh RUNS STAGE CMD [ARG...]
# Each stage keeps one line (its latest run) in RUNS/timings.tsv; `make reproduce` prints the file.
# A failed command records nothing and keeps its exit status.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 RUNS STAGE CMD [ARG...]" >&2
  exit 2
fi
runs=$1 stage=$2
shift 2
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
mkdir -p "$runs"
file=$runs/timings.tsv tmp=$runs/.timings.tsv.$$
{
  [[ -f $file ]] && awk -F'\t' -v s="$stage" '$1 != s' "$file"
  awk -v s="$stage" -v a="$start" -v b="$end" 'BEGIN { printf "%s\t%.1f\n", s, b - a }'
} > "$tmp"
mv "$tmp" "$file"
