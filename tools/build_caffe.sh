#!/usr/bin/env bash
# Build and install BVLC Caffe 1.0 with pycaffe: the one recipe behind `make caffe`, CI and the Dockerfiles.
#
# Source, first that applies: --src DIR|TARBALL|DSC; Debian 11's source package `caffe` via apt (signed
# index, checked hashes; Debian's own patches applied by dpkg-source), from deb.debian.org, then from
# archive.debian.org (where Debian moves retired releases); a git clone of BVLC/caffe at 99bd997.
# Trees without Debian's patches get patches/upstream/; our patches in patches/ (and patches/cuda/ for --gpu)
# go on top. A stamp of everything that shapes the build makes a second run return at once.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tools/build_caffe.sh --prefix DIR --python PY [--src DIR|TARBALL] [--gpu] [--cuda-arch "80 90"]
                            [--cuda-libs DIR] [--jobs N] [--blas Open|Atlas|MKL] [--extra-cmake "ARGS"]
                            [--work DIR] [--configure-only]

Builds BVLC Caffe (CPU unless --gpu) with pycaffe for interpreter PY and installs it under DIR:
DIR/bin/caffe, DIR/lib/libcaffe.so, DIR/lib/python3/dist-packages/caffe. Logs go to <work>/build.log.
--work: source and build folder (default .caffe-build/cpu or .caffe-build/cuda); give experimental builds
their own so they do not clobber the shared one.
--src: a source tree, a tarball of one, or Debian's caffe_*.dsc (its two tarballs next to it).
--configure-only: fetch, patch and configure in <work>, then stop (installs nothing).
Environment: CAFFE_SRC_SOURCES="A.sources B.sources" replaces the apt sources tried in turn (default
tools/caffe-src.sources tools/caffe-src-archive.sources); CAFFE_GIT_URL replaces the BVLC/caffe clone URL.
EOF
}

die() { echo "build_caffe: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX="" PY="" SRC="" WORK="" GPU=0 CUDA_ARCH="90" CUDA_LIBS="" JOBS=$(nproc) BLAS=Open EXTRA="" CONFIGURE_ONLY=0
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
    --configure-only) CONFIGURE_ONLY=1; shift ;;
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
# SHA-256 of Debian's caffe_$DEBIAN_VERSION.dsc, which lists the SHA-256 of both tarballs: pins a --src DSC.
DEBIAN_DSC_SHA256=c492f4893fc1ba1fb514b2d9b4763bc78dc93571ea24adc6e604eccbb93cdd64
GIT_COMMIT=99bd99795dcdf0b1d3086a8d67ab1782a8a08383
GIT_URL=${CAFFE_GIT_URL:-https://github.com/BVLC/caffe.git}
read -r -a APT_SOURCES <<<"${CAFFE_SRC_SOURCES:-$ROOT/tools/caffe-src.sources $ROOT/tools/caffe-src-archive.sources}"
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
  else SRC_ID="file:$(sha256sum <"$SRC" | cut -c1-16)"; fi
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
  # OpenMP threads for Caffe's own CPU loops (patch 0007), the runtime oneDNN already uses.
  -DUSE_OPENMP=ON
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
# CMake 4 refuses Caffe's cmake_minimum_required(VERSION 2.8.7); 3.5 is the oldest policy level it keeps.
CMAKE_MAJOR=$(cmake --version | sed -n -E '1s/^cmake version ([0-9]+)\..*/\1/p')
[ "${CMAKE_MAJOR:-0}" -ge 4 ] && CMAKE_ARGS+=(-DCMAKE_POLICY_VERSION_MINIMUM=3.5)
# shellcheck disable=SC2206
[ -n "$EXTRA" ] && CMAKE_ARGS+=($EXTRA)
if command -v ccache >/dev/null; then
  CMAKE_ARGS+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

STAMP_TEXT=$(printf '%s\n' "$SRC_ID" "python $PY_VER numpy ${NUMPY_VER%%.*}" "${CMAKE_ARGS[@]}" \
  | grep -v LAUNCHER; cat "$0"; find "${PATCH_DIRS[@]}" -maxdepth 1 -name '*.patch' 2>/dev/null | sort | xargs -r cat)
STAMP=$(printf '%s' "$STAMP_TEXT" | sha256sum | cut -d' ' -f1)
STAMP_FILE=$PREFIX/.cellfcn-build-stamp
if [ "$CONFIGURE_ONLY" = 0 ] && [ -f "$STAMP_FILE" ] && [ "$(cat "$STAMP_FILE")" = "$STAMP" ] && [ -x "$PREFIX/bin/caffe" ]; then
  echo "Caffe ($VARIANT) is up to date in $PREFIX"
  exit 0
fi

# --- fetch the source -----------------------------------------------------------------------------------------
TRIED=()            # each source tried, with the lines that say why it failed: the message when all fail
UPSTREAM_PATCHES=0  # 1: the tree lacks Debian's patches, so patches/upstream/ supplies those the build needs

why() {  # apt's and git's own reasons in an attempt's output, on one line; apt's warnings when it gave none
  local reasons
  reasons=$(awk '/^Err:/ { err = 1; next } err && /^  / { sub(/^ +/, ""); print; next } { err = 0 }
                 /^(E:|fatal:|error:)/' "$1" | awk '!seen[$0]++')
  [ -n "$reasons" ] || reasons=$(grep -E '^W:' "$1" || true)
  printf '%s\n' "$reasons" | head -n 3 | cut -c1-240 | paste -sd' '
}
where() { echo "$(sed -n -E 's/^URIs:[[:space:]]*//p' "$1" | paste -sd' ') ($(sed -n -E 's/^Suites:[[:space:]]*//p' "$1"))"; }

fetch_debian() {  # $1: deb822 sources file, $2: destination; apt checks the signed index and the file hashes
  local apt_dir out=$WORK/attempt.log
  apt_dir=$WORK/apt/$(basename "$1" .sources)
  rm -rf "$apt_dir"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives"
  local opts=(-o "Dir::Etc::SourceList=$1" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt_dir/lists"
              -o APT::Sandbox::User=root -o Acquire::http::Timeout=30)
  local rc=0
  # apt-get update only warns when it cannot fetch; no Sources index is the failure to report.
  { apt-get "${opts[@]}" update && compgen -G "$apt_dir/lists/*_source_Sources*" >/dev/null &&
    (cd "$apt_dir/archives" && apt-get "${opts[@]}" source --download-only "caffe=$DEBIAN_VERSION") &&
    (cd "$apt_dir/archives" && dpkg-source -x "caffe_$DEBIAN_VERSION.dsc" "$2"); } >"$out" 2>&1 || rc=1
  cat "$out" >>"$LOG"
  [ "$rc" = 0 ] || TRIED+=("Debian source package caffe $DEBIAN_VERSION from $(where "$1"): $(why "$out")")
  rm -f "$out"
  return "$rc"
}

fetch_git() {  # $1: destination
  local out=$WORK/attempt.log rc=0
  { git clone -q "$GIT_URL" "$1" && git -C "$1" -c advice.detachedHead=false checkout -q "$GIT_COMMIT"; } >"$out" 2>&1 || rc=1
  cat "$out" >>"$LOG"
  [ "$rc" = 0 ] || TRIED+=("git clone of $GIT_URL at ${GIT_COMMIT:0:7}: $(why "$out")")
  rm -f "$out"
  return "$rc"
}

unpack_src() {  # --src: a tree, a tarball of one (with or without a top folder), or Debian's .dsc
  case "$SRC" in
    *.dsc)
      [ "$(sha256sum <"$SRC" | cut -d' ' -f1)" = "$DEBIAN_DSC_SHA256" ] \
        || die "CAFFE_SRC $SRC is not Debian's caffe_$DEBIAN_VERSION.dsc (its SHA-256 differs)"
      command -v dpkg-source >/dev/null || die "unpacking a .dsc needs dpkg-source: run 'make deps'"
      # dpkg-source checks both tarballs against the SHA-256 sums the pinned .dsc lists.
      dpkg-source -x "$SRC" "$SRC_DIR.tmp" >>"$LOG" 2>&1 || die "dpkg-source could not unpack $SRC (see $LOG)"
      echo "Using Debian source package caffe $DEBIAN_VERSION from $SRC" ;;
    *)
      mkdir -p "$SRC_DIR.tmp"
      if [ -d "$SRC" ]; then
        cp -a "$SRC/." "$SRC_DIR.tmp/"
      else
        tar -xf "$SRC" -C "$SRC_DIR.tmp" || die "cannot unpack CAFFE_SRC tarball: $SRC"
        # A GitHub tarball holds one top folder; Debian's orig tarball holds the tree itself.
        local top
        mapfile -t top < <(find "$SRC_DIR.tmp" -mindepth 1 -maxdepth 1)
        if [ ! -f "$SRC_DIR.tmp/CMakeLists.txt" ] && [ ${#top[@]} = 1 ] && [ -d "${top[0]}" ]; then
          mv "${top[0]}" "$SRC_DIR.top" && rmdir "$SRC_DIR.tmp" && mv "$SRC_DIR.top" "$SRC_DIR.tmp"
        fi
      fi
      [ -f "$SRC_DIR.tmp/CMakeLists.txt" ] && [ -d "$SRC_DIR.tmp/src/caffe" ] || die "CAFFE_SRC is not a Caffe source tree: $SRC"
      UPSTREAM_PATCHES=1
      echo "Using CAFFE_SRC $SRC" ;;
  esac
}

: >"$LOG"
SRC_DIR=$WORK/src
rm -rf "$SRC_DIR" "$SRC_DIR.tmp" "$SRC_DIR.top"
echo "Fetching Caffe source (log: $LOG)"
if [ -n "$SRC" ]; then
  unpack_src
else
  FETCHED=0
  if command -v apt-get >/dev/null && command -v dpkg-source >/dev/null; then
    for sources in "${APT_SOURCES[@]}"; do
      if fetch_debian "$sources" "$SRC_DIR.tmp"; then
        echo "Using Debian source package caffe $DEBIAN_VERSION from $(where "$sources")"
        FETCHED=1
        break
      fi
      rm -rf "$SRC_DIR.tmp"
      echo "  Debian source package not available from $(where "$sources")"
    done
  else
    TRIED+=("Debian source package: needs apt-get and dpkg-source (Debian/Ubuntu with dpkg-dev)")
  fi
  if [ "$FETCHED" = 0 ]; then
    echo "  cloning BVLC/caffe at ${GIT_COMMIT:0:7} from $GIT_URL"
    if command -v git >/dev/null; then fetch_git "$SRC_DIR.tmp" || rm -rf "$SRC_DIR.tmp"
    else TRIED+=("git clone of $GIT_URL: git is not installed"); fi
    [ -d "$SRC_DIR.tmp" ] || {
      echo "build_caffe: could not fetch the Caffe source; tried, in order:" >&2
      printf '  - %s\n' "${TRIED[@]}" >&2
      die "put the source in place yourself: CAFFE_SRC=<caffe_$DEBIAN_VERSION.dsc, its orig tarball or a tree> (README); full log: $LOG"
    }
    UPSTREAM_PATCHES=1
  fi
fi
mv "$SRC_DIR.tmp" "$SRC_DIR"

# The source tree records what we applied (name and hash): patches that touch the same file one after the other
# can no longer be recognised one by one with a reverse dry run once the later ones are in.
APPLIED=$SRC_DIR/.cellfcn-patches
apply_patches() {  # $1: folder of *.patch files, applied in name order unless already in the source
  local p id
  for p in "$1"/*.patch; do
    [ -e "$p" ] || continue
    id="$(basename "$p") $(sha256sum <"$p" | cut -c1-64)"
    if grep -qxF "$id" "$APPLIED" 2>/dev/null; then
      echo "  already in source: $(basename "$p")"
    elif patch -d "$SRC_DIR" -p1 -s -f --dry-run <"$p" >/dev/null 2>&1; then
      patch -d "$SRC_DIR" -p1 -s -f <"$p" >>"$LOG" 2>&1
      echo "$id" >>"$APPLIED"
      echo "  applied $(basename "$p")"
    elif patch -d "$SRC_DIR" -p1 -s -f -R --dry-run <"$p" >/dev/null 2>&1; then
      echo "  already in source: $(basename "$p")"
    else
      die "patch $(basename "$p") does not apply to this Caffe source"
    fi
  done
}
[ "$UPSTREAM_PATCHES" = 1 ] && apply_patches "$ROOT/patches/upstream"
for dir in "${PATCH_DIRS[@]}"; do apply_patches "$dir"; done

# --- configure, build, install ---------------------------------------------------------------------------------
fail() {
  echo "build_caffe: $1 failed; full log: $LOG" >&2
  "$ROOT/tools/build_errors.sh" "$LOG" >&2
  exit 1
}
BUILD_DIR=$WORK/build
mkdir -p "$BUILD_DIR"
echo "Configuring Caffe ($VARIANT) for Python $PY_VER, numpy $NUMPY_VER"
(cd "$BUILD_DIR" && cmake "$SRC_DIR" "${CMAKE_ARGS[@]}") >>"$LOG" 2>&1 || fail "cmake configure"
if [ "$CONFIGURE_ONLY" = 1 ]; then
  echo "Configured Caffe in $BUILD_DIR with $(cmake --version | head -n 1)"
  exit 0
fi
echo "Building with $JOBS jobs (a cold build takes minutes; progress in $LOG)"
cmake --build "$BUILD_DIR" -j "$JOBS" >>"$LOG" 2>&1 || fail "compile"
rm -f "$STAMP_FILE"
# Unlink the old install first: a caffe process still running keeps its files, instead of seeing them rewritten.
rm -rf "${PREFIX:?}/bin" "$PREFIX/lib" "$PREFIX/include" "$PREFIX/python" "$PREFIX/share"
cmake --build "$BUILD_DIR" --target install >>"$LOG" 2>&1 || fail "install"
"$PREFIX/bin/caffe" --version >>"$LOG" 2>&1 || fail "running the installed caffe binary"
echo "$STAMP" >"$STAMP_FILE"
echo "Installed $("$PREFIX/bin/caffe" --version 2>/dev/null | head -1) ($VARIANT) into $PREFIX"
