#!/usr/bin/env bash
# `make test-qgis340`: GullySeg's `make setup` and tests on Debian 13 "trixie" (QGIS 3.40 LTR, Python 3.13,
# GDAL 3.10, numpy 2) in a chroot, from any Debian-like host, as root.
#
#   tools/debian13/run.sh [make target and variables ...]      default: test
#   e.g. tools/debian13/run.sh test PYTEST_ARGS="tests/test_segment.py -x"
#   tools/debian13/run.sh --exec 'COMMAND'    a shell command in the copy, after `make setup`
#
# 1. The root file system is built once with debootstrap + apt-get (about 5 minutes) and cached in
#    $GULLYSEG_TRIXIE_ROOT (default /var/cache/gullyseg/trixie); it is rebuilt when the package list
#    below changes. A half-built one is never used (built as <root>.partial, renamed when complete).
# 2. Each run copies this checkout (the files git tracks or would track; no .venv) and ../shared/data to
#    /build inside it, keeps the chroot's own .venv from the last run (setup.sh's stamp decides what to
#    reinstall), then runs `make setup` and `make <target>` there, headless.
# The host's certificate bundle, pip configuration and PIP_* variables go in, so pip reaches the same
# package index as on the host. /proc, /sys, /dev are mounted for the run and unmounted on any exit
# (a trap); processes left inside the chroot are ended. Runs are serialised by a lock file.
set -euo pipefail

ROOT_FS="${GULLYSEG_TRIXIE_ROOT:-/var/cache/gullyseg/trixie}"
MIRROR="${GULLYSEG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=trixie
# What setup.sh installs, plus what the chroot needs to run it (make, certificates, locales).
PACKAGES="qgis python3-qgis qgis-providers gdal-bin python3-gdal python3-venv python3-pip python3-pil
python3-matplotlib xvfb xauth make git ca-certificates locales-all"
BUILD_VERSION=1  # bump to force a rebuild from scratch (a changed PACKAGES only installs what is new)

checkout="$(cd "$(dirname "$0")/../.." && pwd)"
shared="${GULLYSEG_SHARED:-$checkout/../shared}"
log() { echo "debian13 [$(date -u +%T)]: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (debootstrap, chroot, mount): run it as root or with sudo"
  exit 2
fi
mkdir -p "$(dirname "$ROOT_FS")"
exec 9>"$ROOT_FS.lock"
if ! flock -n 9; then
  log "another run holds $ROOT_FS.lock; waiting"
  flock 9
fi

mounted=()  # mount points, in the order mounted
cleanup() {
  local rc=$? i pid target
  # processes still running inside the chroot (a test's Xvfb, say): ours, ended by id
  for target in "$ROOT_FS" "$ROOT_FS.partial"; do
    [ -d "$target" ] || continue
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
      if [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$target" ]; then
        kill -TERM "$pid" 2>/dev/null || true
      fi
    done
  done
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null \
      || log "could not unmount ${mounted[i]}"
  done
  mounted=()
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_into() {  # mount_into ROOT: /proc, /sys, its own /dev/pts and /dev/shm (debootstrap made /dev's nodes)
  local r="$1"
  mount -t proc proc "$r/proc"; mounted+=("$r/proc")
  mount -t sysfs -o ro sysfs "$r/sys"; mounted+=("$r/sys")
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"; mounted+=("$r/dev/pts")
  mount -t tmpfs -o mode=1777,size=2g tmpfs "$r/dev/shm"; mounted+=("$r/dev/shm")
}

unmount_all() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[i]}"; done
  mounted=()
}

safe_remove() {  # rm -rf a root file system only when nothing is mounted below it
  local r="$1"
  [ -e "$r" ] || return 0
  if findmnt -rn -o TARGET | grep -q -F "$r/"; then
    log "refusing to remove $r: something is still mounted below it"
    exit 1
  fi
  rm -rf --one-file-system "$r"
}

copy_host_config() {  # copy_host_config ROOT: certificates, pip configuration, resolver
  local r="$1" f
  for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /root/.config/pip/pip.conf /etc/resolv.conf; do
    if [ -f "$f" ]; then
      mkdir -p "$r$(dirname "$f")"
      cp -L "$f" "$r$f"
    fi
  done
}

in_chroot() {  # in_chroot ROOT COMMAND: bash -c COMMAND inside, in a clean environment plus the host's PIP_*
  local r="$1" v env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
                     DEBIAN_FRONTEND=noninteractive QT_QPA_PLATFORM=offscreen)
  for v in CI GULLYSEG_TRAIN $(compgen -e | grep -E '^(PIP_|HTTPS?_PROXY$|https?_proxy$|NO_PROXY$|no_proxy$)' || true); do
    if [ -n "${!v:-}" ]; then env+=("$v=${!v}"); fi
  done
  chroot "$r" /usr/bin/env -i "${env[@]}" bash -c "$2"
}

build_rootfs() {
  local want partial="$ROOT_FS.partial" t0=$SECONDS
  want="$(echo "$SUITE $BUILD_VERSION" | sha256sum | cut -d' ' -f1)"
  if [ -f "$ROOT_FS/.gullyseg-rootfs" ] && [ "$(cat "$ROOT_FS/.gullyseg-rootfs")" = "$want" ]; then
    if [ "$(cat "$ROOT_FS/.gullyseg-packages" 2>/dev/null)" != "$(echo $PACKAGES)" ]; then
      log "installing the packages added to the list"
      apt_install "$ROOT_FS"
      echo $PACKAGES > "$ROOT_FS/.gullyseg-packages"
    fi
    return 0
  fi
  log "building the Debian 13 root file system in $ROOT_FS (about 5 minutes, once)"
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  if [ ! -f "$partial/.gullyseg-debootstrap-ok" ]; then
    safe_remove "$partial"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$partial" "$MIRROR" >"$ROOT_FS.build.log" 2>&1 \
      || { log "debootstrap failed: see $ROOT_FS.build.log"; tail -20 "$ROOT_FS.build.log" >&2; exit 1; }
    touch "$partial/.gullyseg-debootstrap-ok"
  fi
  apt_install "$partial"
  echo $PACKAGES > "$partial/.gullyseg-packages"
  echo "$want" > "$partial/.gullyseg-rootfs"
  safe_remove "$ROOT_FS"
  mv "$partial" "$ROOT_FS"
  log "root file system ready in $((SECONDS - t0)) s"
}

apt_install() {  # apt_install ROOT: PACKAGES into it (mounted for the time being)
  local r="$1"
  copy_host_config "$r"
  mount_into "$r"
  # shellcheck disable=SC2086
  if ! in_chroot "$r" \
      "apt-get update -qq && apt-get install -y -qq --no-install-recommends $(echo $PACKAGES) && apt-get clean" \
      >>"$ROOT_FS.build.log" 2>&1; then
    log "apt-get in the chroot failed: see $ROOT_FS.build.log"; tail -20 "$ROOT_FS.build.log" >&2; exit 1
  fi
  unmount_all
}

copy_checkout() {  # this checkout (tracked and untracked-but-not-ignored files) to /build/gullyseg
  local dest="$ROOT_FS/build/gullyseg" venv_keep="$ROOT_FS/build/.venv-kept"
  mkdir -p "$ROOT_FS/build"
  [ -d "$dest/.venv" ] && { rm -rf "$venv_keep"; mv "$dest/.venv" "$venv_keep"; }
  rm -rf --one-file-system "$dest" "$ROOT_FS/build/shared"
  mkdir -p "$dest"
  (cd "$checkout" && git ls-files -z --cached --others --exclude-standard \
    | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _ \
    | tar --null -T - -cf -) | tar -xf - -C "$dest"
  # a git index of the copied files (tools/package.py lists the plugin's files with git ls-files)
  git -C "$dest" init -q && git -C "$dest" add -A
  [ -d "$venv_keep" ] && mv "$venv_keep" "$dest/.venv"
  if [ -d "$shared/data" ]; then
    mkdir -p "$ROOT_FS/build/shared"
    cp -r "$shared/data" "$ROOT_FS/build/shared/data"
  else
    log "no $shared/data: the tests that need it will skip"
  fi
}

build_rootfs
copy_host_config "$ROOT_FS"
copy_checkout
mount_into "$ROOT_FS"
[ $# -gt 0 ] || set -- test
if [ "$1" = --exec ]; then
  command="$2"
else
  command="make $(printf '%q ' "$@")"
fi
log "running 'make setup' and '$command' on $(. "$ROOT_FS/etc/os-release" && echo "$PRETTY_NAME")"
in_chroot "$ROOT_FS" "cd /build/gullyseg && make setup && $command"
