#!/usr/bin/env bash
# Builds emi's container image into this machine's default container storage, with
# Debian's buildah (no daemon, no registry): `./run image [--gpu]` calls this.
#
#   localhost/emi:<version>        CPU target (torch's CPU build)
#   localhost/emi:<version>-gpu    GPU target (torch's CUDA build from the package index,
#                                  which brings the CUDA runtime with it)
#
# The Containerfile builds FROM a Python 3.11 Debian base (BASE). Where no registry is
# reachable (this machine), that base is made here once with debootstrap from the Debian
# mirror apt uses, as localhost/emi-base:bookworm. Elsewhere give BASE=docker.io/library/
# python:3.11-slim-bookworm (or any Debian/Ubuntu image with python3 and python3-venv).
#
# Environment: EMI_IMAGE_BASE (the base image; default: the local one, made if missing),
# EMI_IMAGE_TAG (default localhost/emi:<version>[-gpu]), EMI_PIP_WHEELS (a folder of
# wheels pip may take first, mounted at build time only; default /opt/wheels if present).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { printf '[image] %s\n' "$*" >&2; }

target=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) target=gpu ;;
    --cpu) target=cpu ;;
    *) say "unknown option $arg (use --gpu or --cpu)"; exit 2 ;;
  esac
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/pyproject.toml" | head -n 1)"
suffix=""
[ "$target" = gpu ] && suffix=-gpu
tag="${EMI_IMAGE_TAG:-localhost/emi:$version$suffix}"
base="${EMI_IMAGE_BASE:-localhost/emi-base:bookworm}"

need_tools() {
  local missing="" tool
  for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
  done
  [ -z "$missing" ] && return 0
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing$missing and what they need (apt-get)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      buildah podman runc debootstrap skopeo uidmap fuse-overlayfs slirp4netns \
      containernetworking-plugins >/dev/null
    return 0
  fi
  say "missing:$missing. Install them (apt-get install buildah podman runc debootstrap)"
  exit 1
}

host_settings() {
  # This host's quirks (no cgroup v2 for crun; rlimits podman may not raise), written
  # once for every user of the machine's container storage: runc as the runtime and
  # rlimits within the host's.
  local conf=/etc/containers/containers.conf.d/50-emi-host.conf
  [ -e "$conf" ] || [ "$(id -u)" != 0 ] && return 0
  if podman info --format '{{.Host.CgroupsVersion}}' 2>/dev/null | grep -qx v2; then
    return 0
  fi
  mkdir -p "$(dirname "$conf")"
  cat >"$conf" <<'CONF'
# Written by emi's deploy/image/build.sh: this host's cgroups are not v2-only (crun refuses
# them) and podman may not raise rlimits above the host's.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
  say "wrote $conf (runc as podman's runtime; rlimits within this host's)"
}

debian_mirror() {
  # The Debian mirror apt uses here (deb822 or one-line sources).
  local uri
  uri="$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)"
  [ -n "$uri" ] || uri="$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null)"
  echo "${uri:-http://deb.debian.org/debian}"
}

local_base() {
  # localhost/emi-base:bookworm: Debian bookworm (minbase) with python3 and venv.
  if buildah inspect --type image "$base" >/dev/null 2>&1; then
    return 0
  fi
  local rootfs container mount
  rootfs="$(mktemp -d)"
  say "making the base image $base with debootstrap (once; a few minutes)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$(debian_mirror)" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  container="$(buildah from scratch)"
  mount="$(buildah mount "$container")"
  cp -a "$rootfs"/. "$mount"/
  buildah umount "$container" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$container"
  buildah commit --quiet "$container" "$base" >/dev/null
  buildah rm "$container" >/dev/null
  rm -rf "$rootfs"
}

need_tools
host_settings
[ -z "${EMI_IMAGE_BASE:-}" ] && local_base

args=(--pull=never --layers --target "$target" --tag "$tag"
      --build-arg "BASE=$base" --build-arg "VERSION=$version"
      --build-arg "REVISION=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
      --build-arg "SOURCE=$(git -C "$here" remote get-url origin 2>/dev/null || echo "$here")")
# pip inside the build goes through this host's certificate authority (mounted, never
# copied into the image) and may take wheels from a local folder first.
ca=/etc/ssl/certs/ca-certificates.crt
if [ -r "$ca" ]; then
  args+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
wheels="${EMI_PIP_WHEELS:-/opt/wheels}"
if [ -d "$wheels" ] && [ "$target" = cpu ] && ls "$wheels"/torch-*+cpu-*.whl >/dev/null 2>&1; then
  # torch's CPU build is in that folder: take it from there, not from its own index
  args+=(--volume "$wheels:/run/host-wheels:ro" --build-arg PIP_FIND_LINKS=/run/host-wheels
         --build-arg TORCH_INDEX=)
fi
started=$SECONDS
say "building $tag ($target target) from $base"
buildah bud "${args[@]}" -f "$here/Containerfile" "$here"
size="$(podman image inspect --format '{{.Size}}' "$tag")"
say "built $tag in $((SECONDS - started)) s: $((size / 1000000)) MB"
