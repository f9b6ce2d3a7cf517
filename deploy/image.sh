#!/usr/bin/env bash
# Build the x0tta6bl4 container image with podman (the recipe of `make image`).
#
#   deploy/image.sh                 # wheelhouse, base, build; prints the image size
#   X0T_IMAGE=x0tta6bl4:dev deploy/image.sh
#
# 1. The wheelhouse: `pip wheel` of the project with its control and tracing extras, on
#    this host, into deploy/.wheelhouse (deps/ and project/). The build installs only
#    from there (`--no-index`), so it needs no package index (and no proxy CA) inside
#    the build. Two runs at once would share this directory: run one at a time.
# 2. The bases: $X0T_BASE_IMAGE (and $X0T_BUILD_BASE_IMAGE for the build stage, default
#    the same) if set; else the official python:3.11-slim-bookworm (python:3.11-bookworm
#    to build) if present or pullable; else bases made from Debian's own packages
#    (debootstrap --variant=minbase bookworm, python3, python3-venv, ca-certificates;
#    plus binutils for the build stage), imported as x0tta6bl4-base:bookworm and
#    :bookworm-build and cached (rootfs tarballs in $X0T_CACHE_DIR, the images in
#    podman's store), so only the first build pays for debootstrap. Bookworm's python3
#    is 3.11, like the wheels.
# 3. podman build of deploy/Dockerfile with deploy/ as the context (deploy/.dockerignore
#    lets only the wheelhouse in), in docker format so HEALTHCHECK is kept.
#
# Environment: X0T_IMAGE (default x0tta6bl4:VERSION, also tagged :latest unless set),
# X0T_BASE_IMAGE, X0T_BUILD_BASE_IMAGE, X0T_CACHE_DIR (default ~/.cache/x0tta6bl4),
# X0T_DEBIAN_MIRROR, X0T_PULL_TIMEOUT_S (default 120), PYTHON (default .venv/bin/python).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DEFAULT_BASE="docker.io/library/python:3.11-slim-bookworm"
DEFAULT_BUILD_BASE="docker.io/library/python:3.11-bookworm"
FALLBACK_BASE="localhost/x0tta6bl4-base:bookworm"
FALLBACK_BUILD_BASE="localhost/x0tta6bl4-base:bookworm-build"
CACHE_DIR="${X0T_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/x0tta6bl4}"
MIRROR="${X0T_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WHEELHOUSE="$ROOT/deploy/.wheelhouse"
# podman's defaults (crun, the host's file limits) do not work in every sandbox; these
# do, and are harmless elsewhere.
RUNTIME_ARGS=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

say() { printf 'image.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

command -v podman >/dev/null || die "podman is not installed (apt-get install podman runc)"
podman info >/dev/null 2>&1 || die "podman info fails: $(podman info 2>&1 | tail -1)"
[ -x "$PYTHON" ] || die "$PYTHON not found: run 'make test' once (it makes .venv), or set PYTHON"

VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
PYVER="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$PYVER" = "3.11" ] || die "the wheels must match the image's Python 3.11; $PYTHON is $PYVER"
IMAGE="${X0T_IMAGE:-x0tta6bl4:$VERSION}"

# 1. The wheelhouse, rebuilt from scratch so no stale wheel can be picked (pip's own
# cache keeps this to seconds). async-timeout: redis needs it on Python < 3.11.3, which
# Debian's 3.11.2 is, while this host's Python may be newer (a marker pip wheel skips).
# The project's wheel goes apart from its dependencies, so the build installs those in
# a layer of their own that stays cached while only the project changes.
t0=$SECONDS
rm -rf "$WHEELHOUSE"
mkdir -p "$WHEELHOUSE/deps" "$WHEELHOUSE/project"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$WHEELHOUSE/deps" \
    "$ROOT[control,tracing]" "async-timeout>=4.0.3"
mv "$WHEELHOUSE"/deps/x0tta6bl4-*.whl "$WHEELHOUSE/project/"
say "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels in $((SECONDS - t0)) s"

# 2. The base images: BASE for the image, BUILD_BASE for the build stage (the same
# Python, plus binutils: the wheels' shared objects carry debug symbols, and stripping
# them saves about 35 MB).
make_fallback_bases() {
    local run_tar="$CACHE_DIR/debian-bookworm-minbase.tar"
    local build_tar="$CACHE_DIR/debian-bookworm-minbase-build.tar"
    if podman image exists "$FALLBACK_BASE" && podman image exists "$FALLBACK_BUILD_BASE"; then
        return 0
    fi
    mkdir -p "$CACHE_DIR"
    if [ ! -s "$run_tar" ] || [ ! -s "$build_tar" ]; then
        command -v debootstrap >/dev/null || die "no base image: install debootstrap"
        [ "$(id -u)" = 0 ] || die "debootstrap needs root to make the fallback base"
        local dir pkgs
        dir="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
        # shellcheck disable=SC2064  # expand now: the trap must remove this directory
        trap "rm -rf '$dir'" EXIT
        say "debootstrap bookworm (minbase) from $MIRROR"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,binutils \
            bookworm "$dir" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
        # What the official slim images leave out as well: package lists and downloaded
        # packages, documentation, manual pages, translations.
        slim() {
            rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin \
                "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
                "$dir"/usr/share/info/* "$dir"/usr/share/locale/* "$dir"/usr/share/lintian \
                "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/var/cache/debconf/*-old \
                "$dir"/var/lib/dpkg/*-old
        }
        slim
        tar --numeric-owner -C "$dir" -cf "$build_tar.tmp" .
        # The runtime base: the same tree without binutils, exactly
        # `debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates`.
        pkgs="$(chroot "$dir" dpkg-query -W -f '${Package}\n' 'binutils*' libbinutils \
            'libctf*' libgprofng0 libjansson4 2>/dev/null)"
        # shellcheck disable=SC2086  # one package name per word
        chroot "$dir" dpkg --purge $pkgs >>"$CACHE_DIR/debootstrap.log" 2>&1 \
            || die "purging binutils failed; see $CACHE_DIR/debootstrap.log"
        chroot "$dir" python3 -c 'import ssl, venv, sqlite3' || die "python3 broken in $dir"
        slim
        tar --numeric-owner -C "$dir" -cf "$run_tar.tmp" .
        mv "$build_tar.tmp" "$build_tar"
        mv "$run_tar.tmp" "$run_tar"
        rm -rf "$dir"
        trap - EXIT
    fi
    say "importing $run_tar and $build_tar"
    podman import --quiet --change 'CMD ["/bin/sh"]' "$run_tar" "$FALLBACK_BASE" >/dev/null
    podman import --quiet --change 'CMD ["/bin/sh"]' "$build_tar" "$FALLBACK_BUILD_BASE" \
        >/dev/null
}

have_image() {
    podman image exists "$1" \
        || timeout "${X0T_PULL_TIMEOUT_S:-120}" podman pull --quiet "$1" >/dev/null 2>&1
}

t0=$SECONDS
if [ -n "${X0T_BASE_IMAGE:-}" ]; then
    BASE="$X0T_BASE_IMAGE"
    BUILD_BASE="${X0T_BUILD_BASE_IMAGE:-$BASE}"
elif have_image "$DEFAULT_BASE" && have_image "$DEFAULT_BUILD_BASE"; then
    BASE="$DEFAULT_BASE"
    BUILD_BASE="$DEFAULT_BUILD_BASE"
else
    say "$DEFAULT_BASE cannot be pulled; using a Debian bookworm base made here"
    make_fallback_bases
    BASE="$FALLBACK_BASE"
    BUILD_BASE="$FALLBACK_BUILD_BASE"
fi
say "base $BASE (build stage $BUILD_BASE) ready in $((SECONDS - t0)) s"

# 3. The image. The build stage is tagged too, so that the images a rebuild replaces
# can be told apart from podman's layer cache and removed.
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
drop_if_untagged() {
    [ -n "$1" ] || return 0
    if [ "$(podman image inspect --format '{{len .RepoTags}}' "$1" 2>/dev/null)" = 0 ]; then
        podman rmi "$1" >/dev/null 2>&1 || true  # still used by a container: keep it
    fi
}
BUILD_TAG="localhost/x0tta6bl4-build:cache"
old_image="$(image_id "$IMAGE")"
old_build="$(image_id "$BUILD_TAG")"
t0=$SECONDS
build=(podman build "${RUNTIME_ARGS[@]}" --format docker --pull=never
    --build-arg "BASE=$BASE" --build-arg "BUILD_BASE=$BUILD_BASE" --build-arg "VERSION=$VERSION"
    --file "$ROOT/deploy/Dockerfile")
"${build[@]}" --target build --tag "$BUILD_TAG" "$ROOT/deploy" >&2
tags=(--tag "$IMAGE")
[ -n "${X0T_IMAGE:-}" ] || tags+=(--tag "x0tta6bl4:latest")
"${build[@]}" "${tags[@]}" "$ROOT/deploy" >&2
drop_if_untagged "$old_image"
drop_if_untagged "$old_build"
size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
say "built $IMAGE in $((SECONDS - t0)) s"
# The last line is for scripts: the image and its size (uncompressed, as podman images
# shows it) in MB (10^6 bytes).
awk -v img="$IMAGE" -v b="$size" -v base="$BASE" \
    'BEGIN { printf "%s %.1f MB (base %s)\n", img, b / 1e6, base }'
