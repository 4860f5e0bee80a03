#!/usr/bin/env bash
# Build the CPU runtime image (docker/Dockerfile) with the Docker daemon the client reaches.
#
#   docker/build-image.sh [base|image|all]       (default: all)
#
#   base   with BASE_IMAGE=visionforge-base:bookworm (or any visionforge-base:* name): bootstrap
#          that base from Debian's bookworm packages with mmdebstrap (root) and `docker import` it,
#          for machines that cannot pull python:3.11-slim-bookworm. The tarball is kept in
#          CACHE_DIR, keyed on everything that goes into it. Any other BASE_IMAGE: nothing to do.
#   image  docker build -f docker/Dockerfile on that base.
#
# Environment:
#   IMAGE             the image's tag (visionforge:cpu)
#   BASE_IMAGE        the base of both stages (python:3.11-slim-bookworm)
#   TORCH_WHEEL       a torch-2.13.0+cpu wheel; linked or copied into docker/wheels/, and
#                     PyTorch's index is then never asked
#   TORCH_INDEX_URL   where torch comes from otherwise (the Dockerfile's default: PyTorch's CPU index)
#   CACHE_DIR         where the base's tarball is kept (build/docker)
#   DOCKER            the docker client (docker)
#   DOCKER_BUILD_ARGS more arguments for docker build (e.g. --no-cache)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-visionforge:cpu}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
CACHE_DIR=${CACHE_DIR:-build/docker}
DOCKER=${DOCKER:-docker}
# The base's Python is Debian 12's python3 (3.11, what constraints.txt is resolved for).
BASE_PACKAGES=python3,python3-venv,ca-certificates
DEBIAN_SOURCES=(
    "deb http://deb.debian.org/debian bookworm main"
    "deb http://deb.debian.org/debian bookworm-updates main"
    "deb http://deb.debian.org/debian-security bookworm-security main"
)
# This machine's own certificate authorities (an intercepting proxy's among them) go into the
# base too, so that pip inside the build trusts what pip outside it trusts.
shopt -s nullglob
LOCAL_CAS=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob

bootstrap_base() {
    case "$BASE_IMAGE" in
        visionforge-base:*) ;;
        *) echo "==> base: $BASE_IMAGE (pulled by docker build)"; return ;;
    esac
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is not installed (apt-get install mmdebstrap)" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "bootstrapping $BASE_IMAGE with mmdebstrap needs root" >&2; exit 1; }
    local key tarball start
    # merged /usr set up by the hook, as in Debian's own images, rather than by the usrmerge
    # package, which pulls in perl (55 MB)
    local options=(
        --variant=minbase --include="$BASE_PACKAGES"
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
    )
    if [ ${#LOCAL_CAS[@]} -gt 0 ]; then
        options+=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
        for ca in "${LOCAL_CAS[@]}"; do
            options+=(--customize-hook="copy-in $ca /usr/local/share/ca-certificates/")
        done
        options+=(--customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1')
    fi
    key=$( { printf '%s\n' "${options[@]}" "${DEBIAN_SOURCES[@]}"; cat "${LOCAL_CAS[@]}" /dev/null; } \
        | sha256sum | cut -c1-16)
    tarball="$CACHE_DIR/base-bookworm-$key.tar"
    if [ -f "$tarball" ]; then
        echo "==> base: $tarball (cached)"
    else
        echo "==> base: bootstrapping Debian bookworm ($BASE_PACKAGES) with mmdebstrap"
        mkdir -p "$CACHE_DIR"
        start=$(date +%s)
        mmdebstrap --quiet --format=tar "${options[@]}" bookworm "$tarball.part" "${DEBIAN_SOURCES[@]}"
        mv "$tarball.part" "$tarball"
        echo "==> base: bootstrapped in $(( $(date +%s) - start )) s"
    fi
    # An import is a new image each time, which would void the build cache of every layer on it.
    if [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "visionforge.base"}}' "$BASE_IMAGE" 2>/dev/null)" = "$key" ]; then
        echo "==> base: $BASE_IMAGE is already this tarball"
        return
    fi
    "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --change "LABEL visionforge.base=$key" "$tarball" "$BASE_IMAGE" >/dev/null
    echo "==> base: imported as $BASE_IMAGE"
}

build_image() {
    local args=(--network host -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE")
    if [ -n "${TORCH_WHEEL:-}" ]; then
        mkdir -p docker/wheels
        local target
        target="docker/wheels/$(basename "$TORCH_WHEEL")"
        if ! cmp -s "$TORCH_WHEEL" "$target"; then
            ln -f "$TORCH_WHEEL" "$target" 2>/dev/null || cp "$TORCH_WHEEL" "$target"
        fi
        # the wheel is enough: an empty index makes the Dockerfile's fallback an error, not a wait
        args+=(--build-arg TORCH_INDEX_URL=)
    elif [ -n "${TORCH_INDEX_URL:-}" ]; then
        args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    fi
    # shellcheck disable=SC2206  # extra arguments, split as a shell would
    args+=(${DOCKER_BUILD_ARGS:-})
    echo "==> image: $IMAGE from $BASE_IMAGE"
    local start
    start=$(date +%s)
    "$DOCKER" build "${args[@]}" .
    echo "==> image: built in $(( $(date +%s) - start )) s," \
        "$(( $("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") / 1000000 )) MB"
}

case "${1:-all}" in
    base) bootstrap_base ;;
    image) build_image ;;
    all) bootstrap_base; build_image ;;
    *) echo "usage: $0 [base|image|all]" >&2; exit 2 ;;
esac
