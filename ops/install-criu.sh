#!/usr/bin/env bash
# Install a CRIU that passes `criu check` on this node, idempotently.
#
#   install-criu.sh                 1. keep the installed criu when `criu check` passes;
#                                   2. else install Debian's criu when its candidate is
#                                      4.x (Debian 13+);
#                                   3. else build CRIU 4.1.1 from Debian's source tarball
#                                      into /usr/local, caching the build under
#                                      $FERRY_CRIU_CACHE so a second run takes seconds.
#   install-criu.sh --package [DIR] build once (or reuse the cached build) and pack it as
#                                   DIR/criu-4.1.1-ARCH.tar.gz (DIR: /tmp) for the other
#                                   nodes of that architecture: no compiler, no build
#                                   deps, no minutes of SD-card writes on each of them.
#   install-criu.sh --from TARBALL  install such a package: its architecture must be this
#                                   node's, and its criu must pass `criu check` here
#                                   before anything is installed.
#
# ARCH is Debian's name for the userland (arm64, armhf, amd64), so a 32-bit
# Raspberry Pi OS on a 64-bit kernel gets an armhf package, as it must.
#
# Debian 12's criu 3.17.1 fails `criu check` on recent kernels ("vdso:
# Unexpected rt vDSO area bounds"), hence the build; on Linux >= 6.16 CRIU
# 4.1.1 passes `criu check` but cannot dump an inet socket, so "works" also
# means a real dump of a process with one (inet_dump_ok), and the build
# applies ferry's patches (ops/criu/*.patch) to the source. The source comes
# through a temporary deb-src-only entry for trixie. Never a binary (deb) trixie suite:
# one `apt-get install` would then upgrade libc6 and half the machine.
set -euo pipefail

CRIU_VERSION=4.1.1
ORIG_SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
CACHE=${FERRY_CRIU_CACHE:-/var/cache/ferry/criu}
PREFIX=${FERRY_CRIU_PREFIX:-/usr/local}
SRC_ENTRY=/etc/apt/sources.list.d/ferry-criu-src.sources
BUILD_DEPS="build-essential pkg-config protobuf-compiler protobuf-c-compiler
  libprotobuf-dev libprotobuf-c-dev python3-protobuf libnl-3-dev libnet1-dev
  libcap-dev libbsd-dev libgnutls28-dev libnftables-dev uuid-dev
  iproute2 xz-utils patch"
RUNTIME_LIBS="libprotobuf-c1 libnl-3-200 libnet1 libbsd0 libgnutls30 libnftables1 libuuid1 libcap2"
ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)

log() { echo "install-criu: $*" >&2; }

criu_ok() {
    command -v criu >/dev/null 2>&1 && criu check >/dev/null 2>&1 && inet_dump_ok
}

# A dump of a process holding a TCP socket (what a container with its own address holds).
inet_dump_ok() {
    command -v python3 >/dev/null 2>&1 || return 0
    local dir pid ok=1
    dir=$(mktemp -d)
    setsid python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); time.sleep(60)' \
        </dev/null >/dev/null 2>&1 &
    pid=$!
    sleep 0.3
    criu dump -t "$pid" -D "$dir" --leave-running -o dump.log >/dev/null 2>&1 || ok=0
    kill "$pid" 2>/dev/null || true
    rm -rf "$dir"
    ((ok)) || log "criu $(criu --version | head -1) passes criu check but cannot dump an inet socket here"
    ((ok))
}

mode=install
case ${1:-} in
    "") ;;
    --package) mode=package; OUT=${2:-/tmp} ;;
    --from)
        mode=from
        TARBALL=${2:?"install-criu.sh --from TARBALL: name the package (from --package)"}
        ;;
    *) log "unknown argument ${1}: use --package [DIR] or --from TARBALL"; exit 2 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
    if [[ $mode == install ]] && criu_ok; then
        log "criu $(criu --version | head -1) passes criu check"; exit 0
    fi
    log "not root: run this script as root"; exit 1
fi

if [[ $mode == install ]] && criu_ok; then
    log "keeping $(command -v criu): $(criu --version | head -1), criu check passes"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update() { [[ $apt_updated == 1 ]] || { apt-get update -qq; apt_updated=1; }; }

install_cached_build() {
    [[ -x $CACHE/criu-$CRIU_VERSION/criu/criu ]] || return 1
    log "installing cached build from $CACHE/criu-$CRIU_VERSION"
    install -m 0755 "$CACHE/criu-$CRIU_VERSION/criu/criu" "$PREFIX/sbin/criu"
    hash -r
    criu_ok
}

# Runtime libraries the built binary links against (also wanted on a cache hit).
need_runtime_libs() {
    local missing=()
    for p in $RUNTIME_LIBS; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then apt_update; apt-get install -y -qq "${missing[@]}" >/dev/null; fi
}

# --from: a package built by --package on a node of the same architecture.
install_package() {
    local name meta
    [[ -f $TARBALL ]] || { log "no package at $TARBALL"; exit 2; }
    name=criu-$CRIU_VERSION-$ARCH
    tmp=$(mktemp -d)  # global: the EXIT trap outlives this function
    trap 'rm -rf "$tmp"' EXIT
    if tar -tzf "$TARBALL" | grep -qv "^$name/"; then
        log "$TARBALL is not a criu $CRIU_VERSION package for $ARCH (want $name/ inside)"
        exit 2
    fi
    tar -C "$tmp" -xzf "$TARBALL"
    meta=$tmp/$name/FERRY-CRIU
    grep -qx "arch=$ARCH" "$meta" && grep -qx "version=$CRIU_VERSION" "$meta" \
        || { log "$TARBALL: its FERRY-CRIU says another version or arch than $CRIU_VERSION/$ARCH"; exit 2; }
    (cd "$tmp/$name" && sha256sum -c --status SHA256SUMS) \
        || { log "$TARBALL: criu does not match its SHA256SUMS"; exit 2; }
    need_runtime_libs
    if cmp -s "$tmp/$name/criu" "$PREFIX/sbin/criu" && "$PREFIX/sbin/criu" check >/dev/null 2>&1; then
        log "keeping $PREFIX/sbin/criu: the package's criu $CRIU_VERSION, criu check passes"
        return
    fi
    if ! "$tmp/$name/criu" check >"$tmp/check.log" 2>&1; then
        log "the packaged criu fails criu check here: $(tail -1 "$tmp/check.log"); nothing installed"
        log "(the kernel may lack an option: see docs/operating.md, Kernel requirements)"
        exit 1
    fi
    install -D -m 0755 "$tmp/$name/criu" "$PREFIX/sbin/criu"
    log "criu $CRIU_VERSION from $TARBALL installed to $PREFIX/sbin/criu; criu check passes"
}

# --package: the cached build (made now if missing), packed for the other nodes.
pack() {
    local name
    name=criu-$CRIU_VERSION-$ARCH
    stage=$(mktemp -d)  # global: the EXIT trap outlives this function
    trap 'rm -rf "$stage"' EXIT
    mkdir "$stage/$name"
    install -m 0755 "$CACHE/criu-$CRIU_VERSION/criu/criu" "$stage/$name/criu"
    printf 'version=%s\narch=%s\nlibs=%s\n' "$CRIU_VERSION" "$ARCH" "$RUNTIME_LIBS" \
        >"$stage/$name/FERRY-CRIU"
    (cd "$stage/$name" && sha256sum criu >SHA256SUMS)
    mkdir -p "$OUT"
    tar -C "$stage" -czf "$OUT/$name.tar.gz" "$name"
    if ! "$stage/$name/criu" check >/dev/null 2>&1; then
        log "note: criu check fails on this build box's own kernel; each node checks again"
    fi
    log "packed $OUT/$name.tar.gz: on each $ARCH node run install-criu.sh --from $name.tar.gz"
}

if [[ $mode == from ]]; then install_package; exit 0; fi
need_runtime_libs
if [[ $mode == install ]] && install_cached_build; then
    log "cached criu $CRIU_VERSION passes criu check"; exit 0
fi
if [[ $mode == package && -x $CACHE/criu-$CRIU_VERSION/criu/criu ]]; then pack; exit 0; fi

# Debian's own package, where it is new enough to know this kernel.
apt_update
candidate=$(apt-cache policy criu 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ $mode == install && -n $candidate && $candidate != "(none)" && ${candidate%%.*} -ge 4 ]]; then
    log "installing Debian's criu $candidate"
    apt-get install -y -qq criu >/dev/null
    if criu_ok; then log "Debian's criu $candidate passes criu check"; exit 0; fi
    log "Debian's criu $candidate fails criu check; removing it and building $CRIU_VERSION"
    apt-get remove -y -qq criu >/dev/null
fi

log "building CRIU $CRIU_VERSION from Debian's source (cache: $CACHE)"
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $BUILD_DEPS >/dev/null
mkdir -p "$CACHE"
tarball=$CACHE/criu_$CRIU_VERSION.orig.tar.xz
if ! echo "$ORIG_SHA256  $tarball" | sha256sum -c --status 2>/dev/null; then
    cleanup_src() {
        rm -f "$SRC_ENTRY"
        apt-get update -qq -o Dir::Etc::sourcelist=/dev/null \
            -o Dir::Etc::sourceparts=- >/dev/null 2>&1 || true
    }
    trap cleanup_src EXIT
    cat >"$SRC_ENTRY" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq -o Dir::Etc::sourcelist="$SRC_ENTRY" \
        -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
    (cd "$CACHE" && apt-get source -qq --download-only "criu=$CRIU_VERSION-1" || true)
    cleanup_src
    trap - EXIT
    echo "$ORIG_SHA256  $tarball" | sha256sum -c --status \
        || { log "could not fetch a verified $tarball"; exit 1; }
fi

rm -rf "$CACHE/criu-$CRIU_VERSION"
tar -C "$CACHE" -xJf "$tarball"
for patch in "$(dirname "$0")"/criu/*.patch; do
    [[ -f $patch ]] || continue
    log "applying $(basename "$patch")"
    patch -s -p1 -d "$CACHE/criu-$CRIU_VERSION" <"$patch"
done
make -C "$CACHE/criu-$CRIU_VERSION" -j"$(nproc)" criu >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; log "build failed (full log: $CACHE/build.log)"; exit 1; }
if [[ $mode == package ]]; then pack; exit 0; fi
install_cached_build || { criu check || true; log "built criu fails criu check"; exit 1; }
log "criu $CRIU_VERSION built and installed to $PREFIX/sbin/criu; criu check passes"
