#!/usr/bin/env bash
# Build and install BVLC Caffe 1.0 with pycaffe: the one recipe behind `make caffe`, CI and the Dockerfiles.
#
# Source, first that applies: --src DIR|TARBALL; Debian 11's source package `caffe` via apt (signed index,
# checked hashes; Debian's own patches applied by dpkg-source); a git clone of BVLC/caffe at 99bd997.
# Our patches in patches/ (and patches/cuda/ for --gpu) go on top. A stamp of everything that shapes the
# build makes a second run return at once.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tools/build_caffe.sh --prefix DIR --python PY [--src DIR|TARBALL] [--gpu] [--cuda-arch "80 90"]
                            [--cuda-libs DIR] [--jobs N] [--blas Open|Atlas|MKL] [--extra-cmake "ARGS"]
                            [--work DIR]

Builds BVLC Caffe (CPU unless --gpu) with pycaffe for interpreter PY and installs it under DIR:
DIR/bin/caffe, DIR/lib/libcaffe.so, DIR/lib/python3/dist-packages/caffe. Logs go to <work>/build.log.
--work: source and build folder (default .caffe-build/cpu or .caffe-build/cuda); give experimental builds
their own so they do not clobber the shared one.
EOF
}

die() { echo "build_caffe: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX="" PY="" SRC="" WORK="" GPU=0 CUDA_ARCH="90" CUDA_LIBS="" JOBS=$(nproc) BLAS=Open EXTRA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --src) SRC=$2; shift 2 ;;
    --gpu) GPU=1; shift ;;
    --cuda-arch) CUDA_ARCH=$2; shift 2 ;;
    --cuda-libs) CUDA_LIBS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --blas) BLAS=$2; shift 2 ;;
    --extra-cmake) EXTRA=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[ -n "$PREFIX" ] && [ -n "$PY" ] || { usage >&2; die "--prefix and --python are required"; }
[ -x "$PY" ] || die "python interpreter not found: $PY (run 'make env' first)"
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
"$PY" -c 'import numpy' 2>/dev/null || die "numpy is not importable by $PY (run 'make env' first)"
for tool in cmake make g++ protoc; do
  command -v "$tool" >/dev/null || die "missing build tool '$tool': run 'make deps' (as root)"
done
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

DEBIAN_VERSION=1.0.0+git20180821.99bd997-8
GIT_COMMIT=99bd99795dcdf0b1d3086a8d67ab1782a8a08383
VARIANT=cpu; [ "$GPU" = 1 ] && VARIANT=cuda
WORK=${WORK:-$ROOT/.caffe-build/$VARIANT}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOG=$WORK/build.log

# --- what shapes the build, for the stamp -------------------------------------------------------------------
PY_INC=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
PY_LIB=$("$PY" -c 'import sysconfig, os; v = sysconfig.get_config_var; print(os.path.join(v("LIBDIR"), v("LDLIBRARY")))')
PY_VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
NUMPY_VER=$("$PY" -c 'import numpy; print(numpy.__version__)')
if [ -n "$SRC" ]; then
  [ -e "$SRC" ] || die "CAFFE_SRC does not exist: $SRC"
  SRC=$(cd "$(dirname "$SRC")" && pwd)/$(basename "$SRC")
  if [ -d "$SRC" ]; then SRC_ID="dir:$SRC:$(find "$SRC" -type f -printf '%P %T@\n' | sort | sha256sum | cut -c1-16)"
  else SRC_ID="tar:$(sha256sum <"$SRC" | cut -c1-16)"; fi
else
  SRC_ID="debian:$DEBIAN_VERSION|git:$GIT_COMMIT"
fi
PATCH_DIRS=("$ROOT/patches")
[ "$GPU" = 1 ] && PATCH_DIRS+=("$ROOT/patches/cuda")

CMAKE_ARGS=(
  -DCMAKE_BUILD_TYPE=Release
  "-DCMAKE_INSTALL_PREFIX=$PREFIX"
  -DCMAKE_INSTALL_RPATH_USE_LINK_PATH=ON
  "-DCMAKE_INSTALL_RPATH=$PREFIX/lib"
  -DUSE_OPENCV=OFF -DUSE_LEVELDB=ON -DUSE_LMDB=ON -DUSE_HDF5=ON
  -DBUILD_docs=OFF -DBUILD_python=ON -DBUILD_python_layer=ON -DBUILD_matlab=OFF
  "-DBLAS=$BLAS"
  "-Dpython_version=$PY_VER"
  "-DPYTHON_EXECUTABLE=$PY" "-DPYTHON_INCLUDE_DIR=$PY_INC" "-DPYTHON_LIBRARY=$PY_LIB"
)
if [ "$GPU" = 1 ]; then
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "--gpu needs nvcc (CUDA toolkit) on PATH or in /usr/local/cuda"
  CMAKE_ARGS+=(-DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DUSE_NCCL=OFF -DCUDA_ARCH_NAME=Manual
               "-DCUDA_ARCH_BIN=$CUDA_ARCH" "-DCUDA_ARCH_PTX=${CUDA_ARCH##* }")
  [ -n "$CUDA_LIBS" ] && CMAKE_ARGS+=("-DCMAKE_LIBRARY_PATH=$CUDA_LIBS/lib" "-DCMAKE_INCLUDE_PATH=$CUDA_LIBS/include")
else
  CMAKE_ARGS+=(-DCPU_ONLY=ON)
fi
# shellcheck disable=SC2206
[ -n "$EXTRA" ] && CMAKE_ARGS+=($EXTRA)
if command -v ccache >/dev/null; then
  CMAKE_ARGS+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

STAMP_TEXT=$(printf '%s\n' "$SRC_ID" "python $PY_VER numpy ${NUMPY_VER%%.*}" "${CMAKE_ARGS[@]}" \
  | grep -v LAUNCHER; cat "$0"; find "${PATCH_DIRS[@]}" -maxdepth 1 -name '*.patch' 2>/dev/null | sort | xargs -r cat)
STAMP=$(printf '%s' "$STAMP_TEXT" | sha256sum | cut -d' ' -f1)
STAMP_FILE=$PREFIX/.cellfcn-build-stamp
if [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && [ -x "$PREFIX/bin/caffe" ]; then
  echo "Caffe ($VARIANT) is up to date in $PREFIX"
  exit 0
fi

# --- fetch the source -----------------------------------------------------------------------------------------
fetch_debian() {
  local apt_dir=$WORK/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives"
  local opts=(-o "Dir::Etc::SourceList=$ROOT/tools/caffe-src.sources" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$apt_dir/lists" -o APT::Sandbox::User=root)
  command -v apt-get >/dev/null && command -v dpkg-source >/dev/null || return 1
  apt-get "${opts[@]}" update >>"$LOG" 2>&1 || return 1
  (cd "$apt_dir/archives" && apt-get "${opts[@]}" source --download-only "caffe=$DEBIAN_VERSION") >>"$LOG" 2>&1 || return 1
  (cd "$apt_dir/archives" && dpkg-source -x "caffe_$DEBIAN_VERSION.dsc" "$1") >>"$LOG" 2>&1
}

fetch_git() {
  command -v git >/dev/null || return 1
  git clone -q https://github.com/BVLC/caffe.git "$1" >>"$LOG" 2>&1 || return 1
  git -C "$1" -c advice.detachedHead=false checkout -q "$GIT_COMMIT" >>"$LOG" 2>&1 || return 1
  # Debian's patches are ours to apply here: the tree lacks them.
  for p in "$ROOT"/patches/upstream/*.patch; do patch -d "$1" -p1 -s <"$p" >>"$LOG" 2>&1 || return 1; done
}

: >"$LOG"
SRC_DIR=$WORK/src
rm -rf "$SRC_DIR" "$SRC_DIR.tmp"
echo "Fetching Caffe source (log: $LOG)"
if [ -n "$SRC" ]; then
  mkdir -p "$SRC_DIR.tmp"
  if [ -d "$SRC" ]; then cp -a "$SRC/." "$SRC_DIR.tmp/"
  else tar -xf "$SRC" -C "$SRC_DIR.tmp" --strip-components=1 || die "cannot unpack CAFFE_SRC tarball: $SRC"; fi
  [ -f "$SRC_DIR.tmp/CMakeLists.txt" ] && [ -d "$SRC_DIR.tmp/src/caffe" ] || die "CAFFE_SRC is not a Caffe source tree: $SRC"
elif fetch_debian "$SRC_DIR.tmp"; then
  echo "Using Debian source package caffe $DEBIAN_VERSION"
else
  rm -rf "$SRC_DIR.tmp"
  echo "Debian source package unavailable; cloning BVLC/caffe at ${GIT_COMMIT:0:7}"
  fetch_git "$SRC_DIR.tmp" || die "could not fetch the Caffe source (see $LOG); pass CAFFE_SRC=<dir or tarball>"
fi
mv "$SRC_DIR.tmp" "$SRC_DIR"

for dir in "${PATCH_DIRS[@]}"; do
  for p in "$dir"/*.patch; do
    [ -e "$p" ] || continue
    if patch -d "$SRC_DIR" -p1 -s -f --dry-run <"$p" >/dev/null 2>&1; then
      patch -d "$SRC_DIR" -p1 -s -f <"$p" >>"$LOG" 2>&1
      echo "  applied $(basename "$p")"
    elif patch -d "$SRC_DIR" -p1 -s -f -R --dry-run <"$p" >/dev/null 2>&1; then
      echo "  already in source: $(basename "$p")"
    else
      die "patch $(basename "$p") does not apply to this Caffe source"
    fi
  done
done

# --- configure, build, install ---------------------------------------------------------------------------------
fail() {
  echo "build_caffe: $1 failed; full log: $LOG" >&2
  grep -E -i '(error|undefined reference|not found)' "$LOG" | grep -v -i 'warning' | tail -n 12 >&2 || tail -n 12 "$LOG" >&2
  exit 1
}
BUILD_DIR=$WORK/build
mkdir -p "$BUILD_DIR"
echo "Configuring Caffe ($VARIANT) for Python $PY_VER, numpy $NUMPY_VER"
(cd "$BUILD_DIR" && cmake "$SRC_DIR" "${CMAKE_ARGS[@]}") >>"$LOG" 2>&1 || fail "cmake configure"
echo "Building with $JOBS jobs (a cold build takes minutes; progress in $LOG)"
cmake --build "$BUILD_DIR" -j "$JOBS" >>"$LOG" 2>&1 || fail "compile"
rm -f "$STAMP_FILE"
# Unlink the old install first: a caffe process still running keeps its files, instead of seeing them rewritten.
rm -rf "${PREFIX:?}/bin" "$PREFIX/lib" "$PREFIX/include" "$PREFIX/python" "$PREFIX/share"
cmake --build "$BUILD_DIR" --target install >>"$LOG" 2>&1 || fail "install"
"$PREFIX/bin/caffe" --version >>"$LOG" 2>&1 || fail "running the installed caffe binary"
echo "$STAMP" >"$STAMP_FILE"
echo "Installed $("$PREFIX/bin/caffe" --version 2>/dev/null | head -1) ($VARIANT) into $PREFIX"
