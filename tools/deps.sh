#!/usr/bin/env bash
# Install the Debian packages in tools/apt-packages.txt (`make deps`); quick when all are present.
set -euo pipefail
LIST=$(dirname "$0")/apt-packages.txt
mapfile -t PKGS < <(grep -v '^#' "$LIST" | grep -v '^$')
command -v dpkg-query >/dev/null || { echo "deps: not a Debian/Ubuntu system; install the equivalents of $LIST yourself" >&2; exit 1; }
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "System packages: all ${#PKGS[@]} present"; exit 0; fi
CMD="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing system packages: ${missing[*]}; run as root: $CMD" >&2
  exit 1
fi
echo "Installing ${#missing[@]} system packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
