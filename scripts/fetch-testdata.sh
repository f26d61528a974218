#!/bin/sh
# Download Debian's libvirt source packages (libvirt's own test data: tests/cputestdata,
# tests/domaincapsdata, tests/qemuxml2argvdata or tests/qemuxmlconfdata, src/cpu_map) into
# .cache/libvirt-src, one tree per Debian suite.
#
#   scripts/fetch-testdata.sh                          (make testdata)
#   TESTDATA_SUITES=trixie scripts/fetch-testdata.sh   (only some suites)
#
# - Suites: TESTDATA_SUITES, default "bullseye bookworm trixie" (libvirt 7.0, 9.0 and 11.3). For each, the
#   libvirt source version apt knows for `libvirt/<suite>`; for the suite this machine runs, the
#   source version of the installed libvirt0 (so the data matches the daemon; LIBVIRT_SRC_VERSION
#   overrides it), or the suite's when libvirt is not installed.
# - deb-src entries: for this machine's suite, /etc/apt/sources.list.d/hostcpu-deb-src.sources, a
#   copy of the deb stanzas of /etc/apt/sources.list.d/debian.sources with "Types: deb-src"; for
#   any other suite, /etc/apt/sources.list.d/hostcpu-deb-src-<suite>.sources, one stanza of
#   "Types: deb-src" only (the archive and keyring of debian.sources): apt takes no binary
#   package from it, so the machine's packages keep coming from its own suite. apt-get update
#   runs only when such a file was written or apt knows no libvirt source for the suite.
# - apt-get source --download-only into .cache/libvirt-src/dl, dpkg-source -x. When the archive
#   answers 404 for the .dsc (trixie's, seen 2026-12), the tarballs still download (apt checks them
#   against the suite's Sources index; this script checks their SHA256 again against
#   `apt-get source --print-uris`) and are unpacked without dpkg-source: the orig tarball, the
#   debian tarball, then debian/patches/series applied in order (what dpkg-source -x does for
#   "3.0 (quilt)").
# - Keeps only what the tests and the conformance harness read (KEEP below: the test data, the
#   test programs whose case lists the harness parses, src/cpu_map and the few src/ files the
#   harness parses or its diagnoses cite, and the domain XMLs of the corpus): 14-21 MB per tree
#   instead of 160-200 MB (tarballs: ~10 MB each in dl/).
# - Each tree is .cache/libvirt-src/libvirt-<debian version>; .cache/libvirt-src/<suite> points at
#   it, and .cache/libvirt-src/current at the tree of this machine's suite (what the unit tests read).
# - Idempotent: a suite whose tree is there costs no apt call at all.
# Prints the path of each tree on stdout, one a line (progress goes to stderr).
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST="$ROOT/.cache/libvirt-src"
SUITES=${TESTDATA_SUITES:-bullseye bookworm trixie}
APT_LISTS=/etc/apt/sources.list.d
DEBIAN_SOURCES="$APT_LISTS/debian.sources"
DEFAULT_ARCHIVE=http://deb.debian.org/debian
DEFAULT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# Paths (relative to the tree, shell patterns allowed) kept after extraction.
KEEP="meson.build debian/changelog debian/source/format
src/cpu_map src/cpu src/conf/cpu_conf.c
src/qemu/qemu_capabilities.c src/qemu/qemu_process.c src/qemu/qemu_domain.c src/qemu/qemu_command.c
src/qemu/qemu_validate.c src/qemu/qemu_postparse.c
tests/cputest.c tests/cputestdata tests/domaincapsdata tests/qemucapabilitiesdata/caps_*x86_64*.xml
tests/qemuxml2argvtest.c tests/qemuxml2argvdata/cpu-*
tests/qemuxmlconftest.c tests/qemuxmlconfdata/cpu-*
tests/testutilshostcpus.h tests/testutilsqemu.c tests/testutilsqemu.h
tests/qemuxml2argvdata/*.xml tests/qemuxml2xmloutdata/*.xml tests/qemuxmlconfdata/*.xml
tests/genericxml2xmlindata/*.xml tests/domainschemadata/*.xml"

log() { echo "fetch-testdata: $*" >&2; }
die() { log "$*"; exit 1; }

SUDO=
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
fi

# shellcheck disable=SC1091 # the running system's file
MACHINE_SUITE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")

# domainschemadata: the domain corpus (tests/reliability/test_corpus.py); a tree kept before it was
# kept is fetched again (from the tarballs in dl/ when they are still there).
is_tree() { [ -d "$1/tests/cputestdata" ] && [ -f "$1/src/cpu_map/index.xml" ] && [ -d "$1/tests/domainschemadata" ]; }

# --- apt sources ---------------------------------------------------------------------------

sources_file() {
    # $1 = suite
    if [ "$1" = "$MACHINE_SUITE" ]; then
        echo "$APT_LISTS/hostcpu-deb-src.sources"
    else
        echo "$APT_LISTS/hostcpu-deb-src-$1.sources"
    fi
}

# Value of field $1 in the first stanza of debian.sources whose Suites has the machine's suite.
debian_sources_field() {
    [ -f "$DEBIAN_SOURCES" ] || return 0
    awk -v field="$1" -v suite="$MACHINE_SUITE" 'BEGIN { RS = ""; FS = "\n" }
        { value = ""; ours = 0
          for (i = 1; i <= NF; i++) {
              if ($i ~ "^" field ":") { value = $i; sub("^" field ":[ \t]*", "", value); sub(" .*", "", value) }
              if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " suite " ")) ours = 1
          }
          if (ours && value != "") { print value; exit } }' "$DEBIAN_SOURCES"
}

machine_sources_text() {
    [ -f "$DEBIAN_SOURCES" ] || die "no $DEBIAN_SOURCES to mirror"
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
}

other_suite_sources_text() {
    # $1 = suite
    archive=$(debian_sources_field URIs)
    keyring=$(debian_sources_field Signed-By)
    echo "# libvirt's source package of Debian $1 for hostcpu.libvirt's conformance tests, written by"
    echo "# scripts/fetch-testdata.sh. Source packages only (no \"deb\"): binaries still come from $MACHINE_SUITE."
    echo
    echo "Types: deb-src"
    echo "URIs: ${archive:-$DEFAULT_ARCHIVE}"
    echo "Suites: $1"
    echo "Components: main"
    echo "Signed-By: ${keyring:-$DEFAULT_KEYRING}"
}

# Writes the deb-src file of suite $1 when missing; returns 0 when it wrote one.
write_sources() {
    file=$(sources_file "$1")
    [ -f "$file" ] && return 1
    tmp=$(mktemp)
    if [ "$1" = "$MACHINE_SUITE" ]; then
        machine_sources_text >"$tmp"
    else
        other_suite_sources_text "$1" >"$tmp"
    fi
    grep -q '^Types: deb-src$' "$tmp" || { rm -f "$tmp"; die "found no deb stanza in $DEBIAN_SOURCES"; }
    log "adding deb-src entries for $1 in $file"
    $SUDO install -m 0644 "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

apt_update() {
    log "apt-get update"
    $SUDO apt-get update -qq >&2
}

# `apt-get source --print-uris` lines of package spec $1 ('URL' file size SHA256:hash), every file
# (run in / : apt leaves out the files the current directory already has).
source_uris() {
    (cd / && apt-get source -qq --print-uris "$1" 2>/dev/null) | grep "^'" || true
}

# The package spec to download for suite $1: libvirt=<version>.
package_spec() {
    version=
    if [ "$1" = "$MACHINE_SUITE" ]; then
        version=${LIBVIRT_SRC_VERSION:-$(dpkg-query -W -f '${source:Version}' libvirt0 2>/dev/null || true)}
    fi
    if [ -z "$version" ]; then
        version=$(source_uris "libvirt/$1" | awk '$2 ~ /\.dsc$/ { sub(/^libvirt_/, "", $2); sub(/\.dsc$/, "", $2); print $2 }')
    fi
    [ -n "$version" ] && echo "libvirt=$version"
}

# --- download and extraction -----------------------------------------------------------------

# Downloads the files of spec $1 into the current directory; each one but the .dsc (and
# signatures) must be there with its SHA256. Prints the URI lines.
download() {
    uris=$(source_uris "$1")
    [ -n "$uris" ] || die "apt knows no source package $1"
    log "apt-get source --download-only $1"
    apt-get source -qq --download-only "$1" >&2 || log "apt-get source failed for some files; checking what came"
    echo "$uris" | while read -r _url file _size hash; do
        case $file in *.dsc | *.asc) continue ;; esac
        [ -f "$file" ] || die "$file of $1 did not download"
        echo "${hash#SHA256:}  $file" | sha256sum -c --status - || die "$file does not match the SHA256 of the Sources index"
    done
    echo "$uris"
}

apply_patch_series() {
    # $1 = unpacked tree with debian/
    series="$1/debian/patches/series"
    [ -f "$series" ] || return 0
    grep -v '^[[:space:]]*\(#\|$\)' "$series" | while read -r patch_name options; do
        # shellcheck disable=SC2086 # options of a series line are separate words (e.g. -p0)
        patch -d "$1" -s -N --no-backup-if-mismatch ${options:--p1} <"$1/debian/patches/$patch_name" >&2 ||
            die "debian/patches/$patch_name does not apply"
    done
}

# Unpacks the downloaded files of the URI lines $1 into directory $2.
unpack() {
    dsc=$(echo "$1" | awk '$2 ~ /\.dsc$/ { print $2 }')
    if [ -n "$dsc" ] && [ -f "$dsc" ]; then
        log "dpkg-source -x $dsc"
        dpkg-source -q -x "$dsc" "$2" >&2
        return
    fi
    orig=$(echo "$1" | awk '$2 ~ /\.orig\.tar\.[a-z0-9]+$/ { print $2 }')
    debian=$(echo "$1" | awk '$2 ~ /\.debian\.tar\.[a-z0-9]+$/ { print $2 }')
    if [ -z "$orig" ] || [ -z "$debian" ]; then
        die "no .dsc and no orig + debian tarballs to unpack"
    fi
    log "no .dsc from the archive: unpacking $orig and $debian, applying debian/patches"
    mkdir -p "$2"
    tar -xf "$orig" -C "$2" --strip-components=1
    tar -xf "$debian" -C "$2"
    grep -qx '3.0 (quilt)' "$2/debian/source/format" || die "$debian is not source format 3.0 (quilt)"
    apply_patch_series "$2"
}

# Copies the KEEP paths of tree $1 into new directory $2.
keep_only_needed() {
    mkdir -p "$2"
    (
        cd "$1"
        found=
        # the shell expands each pattern of KEEP here, inside the tree
        for path in $KEEP; do
            if [ -e "$path" ]; then
                found="$found $path"
            fi
        done
        # shellcheck disable=SC2086 # one word per path (no spaces in libvirt's paths)
        tar -cf - $found
    ) | tar -xf - -C "$2"
}

fetch_tree() {
    # $1 = package spec, $2 = tree directory
    mkdir -p "$DEST/dl"
    work="$2.unpacked"
    rm -rf "$work" "$2.tmp"
    uris=$(cd "$DEST/dl" && download "$1")
    (cd "$DEST/dl" && unpack "$uris" "$work")
    keep_only_needed "$work" "$2.tmp"
    rm -rf "$work"
    is_tree "$2.tmp" || die "$1 has no tests/cputestdata, src/cpu_map/index.xml or tests/domainschemadata"
    rm -rf "$2"
    mv "$2.tmp" "$2"
    # dpkg-source -x copies nothing else; drop a .dsc's stray copies next to the tree
    rm -f "$DEST"/libvirt_*.tar.* "$DEST"/libvirt_*.dsc
}

# --- per suite ---------------------------------------------------------------------------------

# The tree of suite $1 when it is already there (its link, or the machine's installed version).
existing_tree() {
    if [ -L "$DEST/$1" ] && is_tree "$DEST/$1"; then
        echo "$DEST/$(readlink "$DEST/$1")"
        return
    fi
    if [ "$1" = "$MACHINE_SUITE" ]; then
        version=${LIBVIRT_SRC_VERSION:-$(dpkg-query -W -f '${source:Version}' libvirt0 2>/dev/null || true)}
        if [ -n "$version" ] && is_tree "$DEST/libvirt-$version"; then
            echo "$DEST/libvirt-$version"
        fi
    fi
}

# The package spec of suite $1, running apt-get update first when apt cannot tell yet.
resolve_spec() {
    wrote=0
    write_sources "$1" && wrote=1
    spec=
    [ "$wrote" = 1 ] || spec=$(package_spec "$1" || true)
    if [ -n "$spec" ] && [ -n "$(source_uris "$spec")" ]; then
        echo "$spec"
        return
    fi
    apt_update
    spec=$(package_spec "$1") || die "apt knows no libvirt source package in $1 (see $(sources_file "$1"))"
    echo "$spec"
}

ensure_suite() {
    # $1 = suite; prints the tree
    tree=$(existing_tree "$1")
    if [ -z "$tree" ]; then
        spec=$(resolve_spec "$1")
        tree="$DEST/libvirt-${spec#libvirt=}"
        is_tree "$tree" || fetch_tree "$spec" "$tree"
    else
        log "$1: already there"
    fi
    ln -sfn "$(basename "$tree")" "$DEST/$1"
    echo "$tree"
}

mkdir -p "$DEST"
first=
for suite in $SUITES; do
    tree=$(ensure_suite "$suite")
    echo "$tree"
    [ -n "$first" ] || first=$tree
    if [ "$suite" = "$MACHINE_SUITE" ]; then
        ln -sfn "$(basename "$tree")" "$DEST/current"
    fi
done
if [ ! -e "$DEST/current" ] && [ -n "$first" ]; then
    ln -sfn "$(basename "$first")" "$DEST/current"
fi
