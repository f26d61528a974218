#!/bin/sh
# Download Debian's libvirt source package (libvirt's own test data: tests/cputestdata,
# tests/domaincapsdata, tests/qemuxml2argvdata, src/cpu_map) into .cache/libvirt-src.
#
#   scripts/fetch-testdata.sh            (make testdata)
#
# - Takes the source version of the installed libvirt0 (so the data matches the daemon);
#   without libvirt installed, the newest source apt knows.  LIBVIRT_SRC_VERSION overrides.
# - Needs a deb-src entry: when apt knows no libvirt source, writes
#   /etc/apt/sources.list.d/hostcpu-deb-src.sources, a copy of the deb stanzas of
#   /etc/apt/sources.list.d/debian.sources with "Types: deb-src", and runs apt-get update
#   (only then).
# - apt-get source --download-only into .cache/libvirt-src/dl, dpkg-source -x into
#   .cache/libvirt-src/libvirt-<debian version>, and points .cache/libvirt-src/current at it.
# - Idempotent: when that tree is already there it only (re)points `current`.
# Prints the path of the extracted tree on stdout (progress goes to stderr).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.cache/libvirt-src"
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources
SRC_LIST=/etc/apt/sources.list.d/hostcpu-deb-src.sources

log() { echo "fetch-testdata: $*" >&2; }

SUDO=
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
fi

VERSION=${LIBVIRT_SRC_VERSION:-$(dpkg-query -W -f '${source:Version}' libvirt0 2>/dev/null || true)}

finish() {
    # $1 = extracted tree
    ln -sfn "$(basename "$1")" "$DEST/current"
    echo "$1"
    exit 0
}

if [ -n "$VERSION" ] && [ -d "$DEST/libvirt-$VERSION/tests/cputestdata" ]; then
    log "already there"
    finish "$DEST/libvirt-$VERSION"
fi

source_known() {
    apt-cache showsrc libvirt 2>/dev/null | grep -q '^Package: libvirt$'
}

if ! source_known; then
    if [ ! -f "$SRC_LIST" ]; then
        [ -f "$DEBIAN_SOURCES" ] || { log "no $DEBIAN_SOURCES to mirror"; exit 1; }
        log "adding deb-src entries in $SRC_LIST"
        tmp=$(mktemp)
        {
            echo "# deb-src twin of $DEBIAN_SOURCES, written by hostcpu.libvirt scripts/fetch-testdata.sh"
            echo
            # every stanza whose Types is exactly "deb", as deb-src; other stanzas are left out
            awk 'BEGIN { RS = ""; ORS = "\n\n" }
                 { n = split($0, line, "\n"); found = 0; out = ""
                   for (i = 1; i <= n; i++) {
                       if (line[i] ~ /^Types:[ \t]*deb[ \t]*$/) { line[i] = "Types: deb-src"; found = 1 }
                       out = out (i > 1 ? "\n" : "") line[i]
                   }
                   if (found) print out }' "$DEBIAN_SOURCES"
        } >"$tmp"
        grep -q '^Types: deb-src$' "$tmp" || { log "found no deb stanza in $DEBIAN_SOURCES"; rm -f "$tmp"; exit 1; }
        $SUDO install -m 0644 "$tmp" "$SRC_LIST"
        rm -f "$tmp"
    fi
    log "apt-get update"
    $SUDO apt-get update -qq >&2
    source_known || { log "apt still knows no libvirt source package"; exit 1; }
fi

if [ -z "$VERSION" ]; then
    VERSION=$(apt-cache showsrc libvirt | awk '/^Package: libvirt$/ { p = 1 } p && /^Version:/ { print $2; exit }')
fi
TREE="$DEST/libvirt-$VERSION"
if [ -d "$TREE/tests/cputestdata" ]; then
    finish "$TREE"
fi

mkdir -p "$DEST/dl"
cd "$DEST/dl"
log "apt-get source --download-only libvirt=$VERSION"
apt-get source -qq --download-only "libvirt=$VERSION" >&2
DSC="$DEST/dl/libvirt_${VERSION#*:}.dsc"
[ -f "$DSC" ] || { log "no $DSC after download"; exit 1; }
rm -rf "$TREE.tmp"
log "dpkg-source -x $(basename "$DSC")"
dpkg-source -q -x "$DSC" "$TREE.tmp" >&2
mv "$TREE.tmp" "$TREE"
# dpkg-source -x copies the tarballs next to the tree it extracts; they are already in dl/
rm -f "$DEST"/libvirt_*.tar.* "$DEST"/libvirt_*.dsc
finish "$TREE"
