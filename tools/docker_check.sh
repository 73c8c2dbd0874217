#!/usr/bin/env bash
# `make docker-check`: prove the CPU Dockerfile where no Docker engine runs, on each Debian release given
# (default: trixie bookworm), one after the other. buildah builds it (chroot isolation, vfs storage) with
# --build-arg DEBIAN_RELEASE=<release>, then runs `make test` inside the image, or the command given after
# `--`, e.g. `tools/docker_check.sh bookworm -- make reproduce QUICK=1`. No registry needed: when
# debian:<release> is not in local storage, a debootstrap minbase is built once, cached as a tarball, and
# imported under that name. Installs buildah/podman/debootstrap with apt when missing (needs root, like
# buildah's vfs storage). Logs: runs/docker-check/<release>/build.log and test.log.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE_PREFIX=${DOCKER_CHECK_IMAGE:-localhost/cellfcn:check}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${DOCKER_CHECK_CACHE:-/var/cache/cellfcn}
LOG_ROOT=$ROOT/runs/docker-check
STORE=(--storage-driver vfs)
RELEASES=() INNER=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; INNER=("$@"); break ;;
    -*) echo "usage: tools/docker_check.sh [RELEASE...] [-- COMMAND...]" >&2; exit 2 ;;
    *) RELEASES+=("$1"); shift ;;
  esac
done
[ ${#RELEASES[@]} -gt 0 ] || RELEASES=(trixie bookworm)
# No PyTorch in the image (PyPI only has its multi-GB CUDA build): `make test` leaves out the peer's tests.
[ ${#INNER[@]} -gt 0 ] || INNER=(make test)

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

# debian:<release> as the official image has it: minbase, the release + updates + security sources.
make_base_tar() {  # $1: release, $2: tarball to write
  local rootfs=$CACHE/rootfs-$1.tmp
  mkdir -p "$CACHE"
  rm -rf "$rootfs" "$2.tmp"
  echo "Building the debian:$1 base with debootstrap (minutes; log: $CACHE/debootstrap-$1.log)"
  debootstrap --variant=minbase "$1" "$rootfs" "$MIRROR" >"$CACHE/debootstrap-$1.log" 2>&1 \
    || die "debootstrap $1 failed (see $CACHE/debootstrap-$1.log)"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: $1 $1-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $1-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$2.tmp" . || die "could not pack the debootstrap root into $2"
  mv "$2.tmp" "$2"
  rm -rf "$rootfs"
}

ensure_base() {  # $1: release; debian:<release> in buildah's local storage
  local base=docker.io/library/debian:$1 tar=$CACHE/debian-$1-minbase.tar
  buildah "${STORE[@]}" inspect --type image "$base" >/dev/null 2>&1 && return 0
  need_tools debootstrap:debootstrap podman:podman
  [ -f "$tar" ] || make_base_tar "$1" "$tar"
  echo "Importing $tar as $base"
  podman "${STORE[@]}" import --change 'CMD ["bash"]' "$tar" "$base" >/dev/null || die "podman import of $tar failed"
}

check_release() {  # $1: release; builds the image, runs INNER inside, appends a line to SUMMARY
  local rel=$1 image=$IMAGE_PREFIX-$1 log_dir=$LOG_ROOT/$1 start build_s run_s size ctr rc=0
  mkdir -p "$log_dir"
  ensure_base "$rel"
  echo "[$rel] Building $image from $ROOT/Dockerfile (log: $log_dir/build.log)"
  start=$SECONDS
  buildah "${STORE[@]}" bud --isolation chroot --layers --force-rm --pull=never "${MOUNTS[@]}" \
    --build-arg "DEBIAN_RELEASE=$rel" -f "$ROOT/Dockerfile" -t "$image" "$ROOT" >"$log_dir/build.log" 2>&1 \
    || die "[$rel] image build failed; last lines of $log_dir/build.log:
$(tail -n 20 "$log_dir/build.log")"
  build_s=$((SECONDS - start))
  size=$(buildah "${STORE[@]}" images --format '{{.Size}}' "$image" | head -n 1)
  echo "[$rel] Built $image in ${build_s}s, image size $size"

  ctr=$(buildah "${STORE[@]}" from --pull=never "$image") || die "[$rel] cannot create a container from $image"
  echo "[$rel] Running '${INNER[*]}' inside $image (log: $log_dir/test.log)"
  start=$SECONDS
  buildah "${STORE[@]}" run --isolation chroot "${MOUNTS[@]}" "$ctr" -- "${INNER[@]}" >"$log_dir/test.log" 2>&1 || rc=$?
  run_s=$((SECONDS - start))
  buildah "${STORE[@]}" rm "$ctr" >/dev/null 2>&1 || true
  tail -n 3 "$log_dir/test.log"
  [ "$rc" = 0 ] || die "[$rel] '${INNER[*]}' failed inside $image (exit $rc; see $log_dir/test.log)"
  SUMMARY+=("$(printf '%-10s build %5ss  %s %5ss  image %s' "$rel" "$build_s" "'${INNER[*]}'" "$run_s" "$size")")
}

need_tools buildah:buildah
mkdir -p "$LOG_ROOT"
# Trust what the host trusts (a TLS-intercepting proxy's CA, say) while building and testing, without baking
# it into the image: pip reads /etc/pip.conf, bind-mounted only into the RUN steps and the test run.
MOUNTS=()
HOST_CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$HOST_CA" ]; then
  printf '[global]\ncert = /etc/cellfcn-host-ca.crt\n' >"$LOG_ROOT/pip.conf"
  MOUNTS=(-v "$HOST_CA:/etc/cellfcn-host-ca.crt:ro" -v "$LOG_ROOT/pip.conf:/etc/pip.conf:ro")
fi

SUMMARY=()
for rel in "${RELEASES[@]}"; do check_release "$rel"; done
echo "docker-check passed on ${RELEASES[*]}:"
printf '  %s\n' "${SUMMARY[@]}"
