#!/usr/bin/env bash
# Pack what a remote GPU machine needs to run our CUDA Caffe: the `caffe` binary and libcaffe from
# .caffe-cuda with the non-CUDA shared libraries they load (boost, glog, gflags, protobuf, hdf5 and its curl
# chain, lmdb, leveldb, snappy, BLAS), stripped and gzipped, plus a short training set, the FCRN-A training
# net and run_gpu.sh, which runs `caffe device_query`, a short `caffe train` and `caffe time` (direct
# depthwise path and CAFFE_DEPTHWISE=0 GEMM path) on the GPU. CUDA itself (cudart, cuBLAS, cuRAND, the
# driver) comes from the GPU machine; glibc and libstdc++ too.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tools/pack_gpu.sh [--prefix DIR] [--out DIR] [--data H5] [--max-patches N]

  --prefix DIR       CUDA Caffe install prefix (default .caffe-cuda, from `make caffe GPU=1`)
  --out DIR          pack folder to write, replaced when rebuilt (default runs/gpu-pack)
  --data H5          training patches (HDF5 with data/label; default runs/data/synthetic/train.h5,
                     made small with `python -m data_prep synthetic` when missing)
  --max-patches N    patches copied from --data (default 64)

On the GPU machine: bash <pack>/run_gpu.sh [GPU_ID]; logs and a summary go to $OUT (or <pack>/out).
EOF
}

die() { echo "error: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=$ROOT/.caffe-cuda OUT=$ROOT/runs/gpu-pack DATA=$ROOT/runs/data/synthetic/train.h5 MAX_PATCHES=64
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --max-patches) MAX_PATCHES=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
LIMIT=$((64 * 1024 * 1024))
PY=$ROOT/.venv/bin/python
[ -x "$PY" ] || die "no Python env at $ROOT/.venv: run 'make env'"
[[ "$MAX_PATCHES" =~ ^[1-9][0-9]*$ ]] || die "--max-patches must be a positive integer: $MAX_PATCHES"
CAFFE=$PREFIX/bin/caffe
[ -x "$CAFFE" ] || die "no CUDA Caffe at $PREFIX: run 'make caffe GPU=1'"
NET=$ROOT/prototxt/pretrain_train_hdf5.prototxt
[ -f "$NET" ] || die "missing $NET: run 'make prototxt'"

# The CUDA libraries resolve from the build's cuBLAS/cuRAND folder here and from the GPU machine there.
CUDA_LIBS=$("$ROOT/tools/cuda_libs.sh" 2>/dev/null) || CUDA_LIBS=/usr/local/cuda
LD_LIBRARY_PATH=$PREFIX/lib:$CUDA_LIBS/lib:$CUDA_LIBS/lib64:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
ldd "$CAFFE" | grep -q libcudart || die "$CAFFE is not a CUDA build (no libcudart): run 'make caffe GPU=1'"

TMP=$OUT.tmp
rm -rf "$TMP"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/caffe/bin" "$TMP/caffe/lib" "$TMP/data"
cp "$CAFFE" "$TMP/caffe/bin/caffe"
cp -a "$PREFIX"/lib/libcaffe.so* "$TMP/caffe/lib/"

# Provided by the GPU machine: the C runtime, the compiler runtime and CUDA (driver, cudart, cuBLAS, cuRAND).
SYSTEM='^(linux-vdso|ld-linux|libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s'
SYSTEM+='|libcuda|libcudart|libcublas|libcublasLt|libcurand|libcaffe)\.so'
missing=""
while read -r name arrow path _; do
  [ "$arrow" = "=>" ] || continue
  [[ "$name" =~ $SYSTEM ]] && continue
  if [ "$path" = "not" ]; then missing="$missing $name"; continue; fi
  cp -L "$path" "$TMP/caffe/lib/$name"
done < <(ldd "$CAFFE" "$PREFIX"/lib/libcaffe.so | sort -u)
[ -z "$missing" ] || die "libraries not found for $CAFFE:$missing"
find "$TMP/caffe" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec chmod u+w {} + \
  -exec strip --strip-unneeded {} +
tar -czf "$TMP/caffe.tar.gz" -C "$TMP" caffe
echo "pack_gpu: caffe + $(find "$TMP/caffe/lib" -name '*.so*' -type f | wc -l) libraries," \
  "$(du -sm "$TMP/caffe" | cut -f1) MiB stripped, $(du -sm "$TMP/caffe.tar.gz" | cut -f1) MiB gzipped"
rm -rf "$TMP/caffe"

# Training patches: a slice of the real default dataset, or a small synthetic one made with data_prep.
if [ ! -f "$DATA" ]; then
  echo "pack_gpu: $DATA missing; making a small synthetic set with data_prep (seed 0)"
  "$PY" -m data_prep synthetic --out "$TMP/synthetic" --seed 0 --format hdf5 \
    --n-images 4 --n-train "$MAX_PATCHES" --n-test 8 >/dev/null || die "data_prep synthetic failed"
  DATA=$TMP/synthetic/train.h5
fi
"$PY" - "$DATA" "$TMP/data/train.h5" "$MAX_PATCHES" <<'EOF' || die "cannot read training patches from $DATA"
import sys

import h5py
import numpy as np

src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f:
    data, label = f["data"][:n], f["label"][:n]
if data.ndim != 4 or data.shape[1] != 1 or label.shape != data.shape:
    sys.exit(f"error: {src}: data/label must be (N, 1, P, P), got {data.shape} and {label.shape}")
with h5py.File(dst, "w") as f:
    f.create_dataset("data", data=data.astype(np.float32))
    f.create_dataset("label", data=label.astype(np.float32))
print(f"pack_gpu: {len(data)} training patches of {data.shape[2]}x{data.shape[3]} from {src}")
EOF
rm -rf "$TMP/synthetic"
cp "$NET" "$TMP/train.prototxt"

cat >"$TMP/run_gpu.sh" <<'EOF'
#!/usr/bin/env bash
# On the GPU machine: bash run_gpu.sh [GPU_ID]. Unpacks Caffe to a temp folder, then runs caffe device_query,
# a short caffe train on the packed patches and caffe time on the FCRN-A training net, once on the direct
# depthwise path and once on Caffe's GEMM path (CAFFE_DEPTHWISE=0). Logs and summary.txt go to $OUT.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
GPU=${1:-0}
RESULTS=${OUT:-$HERE/out}
ITERS=${TRAIN_ITERS:-200}
mkdir -p "$RESULTS"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$HERE/caffe.tar.gz" -C "$WORK"
CUDA=${CUDA_HOME:-/usr/local/cuda}
export LD_LIBRARY_PATH=$WORK/caffe/lib:$CUDA/lib64:$CUDA/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
CAFFE=$WORK/caffe/bin/caffe
export GLOG_logtostderr=1
if ldd "$CAFFE" | grep 'not found' >&2; then
  echo "error: libraries above are missing (CUDA 13 with cuBLAS/cuRAND expected under $CUDA)" >&2; exit 1
fi
SUMMARY=$RESULTS/summary.txt
: >"$SUMMARY"
step() {  # step NAME COMMAND...: run, log to $RESULTS/NAME.log, record seconds
  local name=$1 start end; shift
  echo "== $name: $*"
  start=$(date +%s.%N)
  if ! "$@" >"$RESULTS/$name.log" 2>&1; then
    tail -n 20 "$RESULTS/$name.log" >&2; echo "error: $name failed (log: $RESULTS/$name.log)" >&2; exit 1
  fi
  end=$(date +%s.%N)
  awk -v n="$name" -v a="$start" -v b="$end" 'BEGIN { printf "%s seconds: %.1f\n", n, b - a }' | tee -a "$SUMMARY"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true; } >>"$SUMMARY"
step device_query "$CAFFE" device_query -gpu "$GPU"

cd "$WORK"
echo "$HERE/data/train.h5" >train.txt
sed "s#source: \".*\"#source: \"$WORK/train.txt\"#" "$HERE/train.prototxt" >train.prototxt
cat >solver.prototxt <<SOLVER
net: "$WORK/train.prototxt"
base_lr: 0.01
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.001
display: 20
max_iter: $ITERS
snapshot_prefix: "$WORK/snap"
solver_mode: GPU
random_seed: 1701
SOLVER
step train "$CAFFE" train -solver solver.prototxt -gpu "$GPU"
grep -E 'Iteration [0-9]+.*loss = ' "$RESULTS/train.log" | sed -n '1p;$p' | tee -a "$SUMMARY"
step time_direct "$CAFFE" time -model train.prototxt -gpu "$GPU" -iterations 50
step time_gemm env CAFFE_DEPTHWISE=0 "$CAFFE" time -model train.prototxt -gpu "$GPU" -iterations 50
for path in direct gemm; do
  echo "-- caffe time, $path path (ms per iteration, batch of the training net)" >>"$SUMMARY"
  grep -E 'Average (Forward pass|Backward pass|Forward-Backward):|(up[0-9]+)[[:space:]]+(forward|backward):' \
    "$RESULTS/time_$path.log" | sed 's/.*\] *//' >>"$SUMMARY"
done
cat "$SUMMARY"
EOF
chmod +x "$TMP/run_gpu.sh"

size=$(du -sb "$TMP" | cut -f1)
[ "$size" -le "$LIMIT" ] || die "the pack is $((size / 1048576)) MiB, over the 64 MiB a GPU machine accepts"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
echo "pack_gpu: wrote $OUT ($((size / 1048576)) MiB); on the GPU machine run: bash $(basename "$OUT")/run_gpu.sh 0"
