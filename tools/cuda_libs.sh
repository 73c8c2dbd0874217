#!/usr/bin/env bash
# Print a folder whose include/ and lib/ (or lib64/) hold the cuBLAS and cuRAND headers and libraries that the
# CUDA build of Caffe links: the CUDA toolkit itself when it has them, else NVIDIA's PyPI wheels installed once
# into .caffe-build/cuda-libs (include/ and lib/ are links into the wheels, with the unversioned .so names the
# linker looks for). Messages go to stderr; stdout is only the folder.
set -euo pipefail
CUBLAS_WHEEL=nvidia-cublas==13.0.0.19
CURAND_WHEEL=nvidia-curand==10.4.0.35

ROOT=$(cd "$(dirname "$0")/.." && pwd)
err() { echo "error: $*" >&2; exit 1; }

cuda_root() {
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then echo /usr/local/cuda
  elif command -v nvcc >/dev/null; then (cd "$(dirname "$(readlink -f "$(command -v nvcc)")")/.." && pwd)
  else return 1; fi
}

has_libs() {  # $1: folder; true when it has both headers and both linkable libraries
  local d=$1 lib
  [ -f "$d/include/cublas_v2.h" ] && [ -f "$d/include/curand.h" ] || return 1
  for lib in cublas curand; do
    [ -e "$d/lib64/lib$lib.so" ] || [ -e "$d/lib/lib$lib.so" ] \
      || [ -e "$d/targets/x86_64-linux/lib/lib$lib.so" ] || return 1
  done
}

APT_HINT="install cuda-libraries-dev-13-0 from NVIDIA's apt repository"
CUDA=$(cuda_root) \
  || err "nvcc not found: install the CUDA 13 toolkit (https://developer.nvidia.com/cuda-downloads) or set CUDA_HOME"
if has_libs "$CUDA"; then echo "$CUDA"; exit 0; fi

DEST=$ROOT/.caffe-build/cuda-libs
STAMP="$CUBLAS_WHEEL $CURAND_WHEEL"
if [ -f "$DEST/.stamp" ] && [ "$(cat "$DEST/.stamp")" = "$STAMP" ] && has_libs "$DEST"; then echo "$DEST"; exit 0; fi

PY=$ROOT/.venv/bin/python; [ -x "$PY" ] || PY=python3
"$PY" -m pip --version >/dev/null 2>&1 \
  || err "$CUDA has no cuBLAS/cuRAND and pip is unavailable: $APT_HINT, or run 'make env'"
echo "cuda_libs: $CUDA lacks cuBLAS/cuRAND; installing $CUBLAS_WHEEL $CURAND_WHEEL into $DEST" >&2
TMP=$DEST.tmp
rm -rf "$TMP"
mkdir -p "$TMP/include" "$TMP/lib"
"$PY" -m pip install --quiet --no-deps --disable-pip-version-check --target "$TMP/pkgs" \
  "$CUBLAS_WHEEL" "$CURAND_WHEEL" >&2 \
  || err "pip could not install $CUBLAS_WHEEL $CURAND_WHEEL: $APT_HINT instead"

# The wheels put headers and libraries under pkgs/nvidia/<lib>/{include,lib}; link them into one include/ and
# lib/ (relative links, so the folder can move) and add the unversioned names: libcublas.so -> libcublas.so.13.
for hdr in cublas_v2.h curand.h; do
  inc=$(find "$TMP/pkgs" -name "$hdr" -printf '%h\n' | head -n 1)
  [ -n "$inc" ] || err "the installed wheels hold no $hdr (see $TMP/pkgs)"
  for f in "$inc"/*; do ln -sfn "../pkgs/${f#"$TMP/pkgs/"}" "$TMP/include/$(basename "$f")"; done
done
while IFS= read -r so; do
  name=$(basename "$so")
  ln -sfn "../pkgs/${so#"$TMP/pkgs/"}" "$TMP/lib/$name"
  [ -e "$TMP/lib/${name%%.so.*}.so" ] || ln -sfn "$name" "$TMP/lib/${name%%.so.*}.so"
done < <(find "$TMP/pkgs" -name 'lib*.so.*' -type f | sort)
has_libs "$TMP" || err "the installed wheels lack cuBLAS/cuRAND headers or libraries (see $TMP)"
echo "$STAMP" >"$TMP/.stamp"
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "$DEST"
