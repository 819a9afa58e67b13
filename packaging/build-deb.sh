#!/usr/bin/env bash
# Build the Debian package netfence_<version>_<arch>.deb from this checkout, then check
# it with lintian.
#
#   bash packaging/build-deb.sh                 # as root on Debian 12: dist/netfence_*.deb
#   bash packaging/build-deb.sh --version 0.1.0+local1 --out DIR --no-apt
#
# Installs the build dependencies with apt (unless --no-apt), copies the source tree to a
# temporary directory (nothing is written into the checkout but the .deb), puts
# packaging/debian there as debian/ and runs dpkg-buildpackage. dh-virtualenv fetches the
# pinned Python dependencies (packaging/debian/requirements.txt) and netfence's build
# requirements from PyPI: the only network access. See packaging/README.md.
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$SRC/dist"
VERSION=""
APT=1
LINTIAN=1
BUILD_DEPS=(debhelper dh-virtualenv dpkg-dev python3 python3-venv python3-dev libffi-dev
            libc6-dev gcc ca-certificates lintian)

usage() { sed -n "2,/^set -euo/p" "$0" | grep "^#" | sed "s/^# \{0,1\}//"; }
die() { printf 'build-deb.sh: error: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }
# shellcheck source=apt-missing.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-missing.sh"

while [ $# -gt 0 ]; do
    case "$1" in
        --version) [ $# -ge 2 ] || { usage >&2; exit 2; }; VERSION="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT="$2"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --no-lintian) LINTIAN=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-deb.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

install_build_deps() {
    apt_install_missing "build dependencies" "${BUILD_DEPS[@]}"
}

upstream_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/src/netfence/__init__.py"
}

# a changelog entry for --version (e.g. the package test's upgrade), on top of the
# committed one
add_changelog_entry() {
    local changelog="$1" version="$2" old
    old="$(cat "$changelog")"
    {
        printf 'netfence (%s) unstable; urgency=medium\n\n' "$version"
        printf '  * Local build (packaging/build-deb.sh --version).\n\n'
        printf ' -- netfence maintainers <netfence-maintainers@example.org>  %s\n\n' "$(date -R)"
        printf '%s\n' "$old"
    } > "$changelog"
}

main() {
    [ "$APT" -eq 0 ] || install_build_deps
    local work upstream version
    work="$(mktemp -d "${TMPDIR:-/tmp}/netfence-deb.XXXXXX")"
    # shellcheck disable=SC2064  # expand now
    trap "rm -rf '$work'" EXIT
    step "source: clean copy of $SRC in $work/netfence"
    mkdir -p "$work/netfence"
    tar -C "$SRC" -cf - --exclude=.git --exclude='.venv*' --exclude=./build --exclude=./dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.hypothesis --exclude=.benchmarks --exclude=./bench/results \
        --exclude='_fastpath*.so' --exclude=_fastpath.c --exclude=_fastpath.o \
        --exclude=./src/netfence/_hook_launcher . | tar -C "$work/netfence" -xf -
    cp -a "$SRC/packaging/debian" "$work/netfence/debian"
    upstream="$(upstream_version)"
    [ -n "$upstream" ] || die "no __version__ in src/netfence/__init__.py"
    [ -z "$VERSION" ] || add_changelog_entry "$work/netfence/debian/changelog" "$VERSION"
    version="$(cd "$work/netfence" && dpkg-parsechangelog -S Version)"
    case "$version" in
        "$upstream"|"$upstream"[+~-]*) ;;
        *) die "debian/changelog's version $version does not start with netfence's $upstream (add an entry to packaging/debian/changelog)" ;;
    esac
    step "dpkg-buildpackage: netfence $version"
    (cd "$work/netfence" && dpkg-buildpackage -us -uc -b)
    local deb
    deb="$(find "$work" -maxdepth 1 -name "netfence_${version}_*.deb" | head -n 1)"
    [ -n "$deb" ] || die "dpkg-buildpackage made no netfence_${version}_*.deb"
    mkdir -p "$OUT"
    cp "$deb" "$OUT/"
    deb="$OUT/$(basename "$deb")"
    if [ "$LINTIAN" -eq 1 ]; then
        step "lintian $deb"
        # overrides (each with its reason) are in packaging/debian/netfence.lintian-overrides
        lintian --fail-on error,warning --info "$deb"
    fi
    step "built $deb"
}

main
