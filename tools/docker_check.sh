#!/usr/bin/env bash
# `make docker-check`: prove the CPU Dockerfile where no Docker engine runs. buildah builds it (chroot isolation,
# vfs storage), then runs `make test` inside the image (or the command given as arguments, e.g.
# `tools/docker_check.sh make reproduce QUICK=1`). No registry needed: when debian:bookworm is not in local
# storage, a debootstrap minbase is built once, cached as a tarball, and imported under that name.
# Installs buildah/podman/debootstrap with apt when missing (needs root, like buildah's vfs storage).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${DOCKER_CHECK_IMAGE:-localhost/cellfcn:check}
BASE=docker.io/library/debian:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${DOCKER_CHECK_CACHE:-/var/cache/cellfcn}
BASE_TAR=$CACHE/debian-bookworm-minbase.tar
LOG_DIR=$ROOT/runs/docker-check
STORE=(--storage-driver vfs)
# The PyTorch bench peer is not part of the image (PyPI only has its multi-GB CUDA build): BENCH_PEER=0.
[ $# -gt 0 ] && INNER=("$@") || INNER=(make test BENCH_PEER=0)

die() { echo "error: docker-check: $*" >&2; exit 1; }
trap 'echo "error: docker-check: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

need_tools() {  # install the packages whose command is missing: "command:package" ...
  local missing=() pair
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  echo "Installing ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null \
    || die "apt-get could not install ${missing[*]}"
}

# debian:bookworm as the official image has it: minbase, the bookworm + updates + security sources.
make_base_tar() {
  local rootfs=$CACHE/rootfs.tmp
  mkdir -p "$CACHE"
  rm -rf "$rootfs" "$BASE_TAR.tmp"
  echo "Building the $BASE base with debootstrap (minutes; log: $CACHE/debootstrap.log)"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $CACHE/debootstrap.log)"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$BASE_TAR.tmp" . || die "could not pack the debootstrap root into $BASE_TAR"
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$rootfs"
}

need_tools buildah:buildah
if ! buildah "${STORE[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
  need_tools debootstrap:debootstrap podman:podman
  [ -f "$BASE_TAR" ] || make_base_tar
  echo "Importing $BASE_TAR as $BASE"
  podman "${STORE[@]}" import --change 'CMD ["bash"]' "$BASE_TAR" "$BASE" >/dev/null \
    || die "podman import of $BASE_TAR failed"
fi

mkdir -p "$LOG_DIR"
# Trust what the host trusts (a TLS-intercepting proxy's CA, say) while building and testing, without baking
# it into the image: pip reads /etc/pip.conf, bind-mounted only into the RUN steps and the test run.
MOUNTS=()
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$HOST_CA" ]; then
  printf '[global]\ncert = /etc/cellfcn-host-ca.crt\n' >"$LOG_DIR/pip.conf"
  MOUNTS=(-v "$HOST_CA:/etc/cellfcn-host-ca.crt:ro" -v "$LOG_DIR/pip.conf:/etc/pip.conf:ro")
fi

echo "Building $IMAGE from $ROOT/Dockerfile (log: $LOG_DIR/build.log)"
start=$SECONDS
buildah "${STORE[@]}" bud --isolation chroot --layers --force-rm --pull=never "${MOUNTS[@]}" \
  -f "$ROOT/Dockerfile" -t "$IMAGE" "$ROOT" 2>&1 | tee "$LOG_DIR/build.log" || die "image build failed (see $LOG_DIR/build.log)"
build_s=$((SECONDS - start))
size=$(buildah "${STORE[@]}" images --format '{{.Size}}' "$IMAGE" | head -n 1)
echo "Built $IMAGE in ${build_s}s, image size $size"

CTR=$(buildah "${STORE[@]}" from --pull=never "$IMAGE") || die "cannot create a container from $IMAGE"
trap 'buildah "${STORE[@]}" rm "$CTR" >/dev/null 2>&1 || true' EXIT
echo "Running '${INNER[*]}' inside $IMAGE"
start=$SECONDS
buildah "${STORE[@]}" run --isolation chroot "${MOUNTS[@]}" "$CTR" -- "${INNER[@]}" \
  || die "'${INNER[*]}' failed inside $IMAGE"
run_s=$((SECONDS - start))

echo "docker-check passed: build ${build_s}s, '${INNER[*]}' ${run_s}s inside, image $IMAGE $size"
