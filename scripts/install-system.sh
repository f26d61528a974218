#!/usr/bin/env bash
# Install the system packages hostcpu.libvirt needs to build, test and demo: libvirt's daemon and
# QEMU driver, QEMU for x86, libvirt's client tools and headers (libvirt-python builds against
# them), a C compiler, virt-install, dpkg-dev (for `apt-get source` in `make testdata`), the
# ShellCheck linter (ansible-test skips its shellcheck sanity test without it), xmllint (libvirt's
# virt-xml-validate runs it: tests/reliability validate cpu_xml output with it) and Chromium (the
# fleet report's HTML is rendered headless in tests/integration/test_fleet_report.py) and
# debootstrap (the chroot hosts of `make testbed`, scripts/testbed).
#
# A fast no-op when everything is present: it asks the package database (dpkg -s / rpm -q), and
# only when something is missing does it refresh the package lists (once) and install.
# Debian/Ubuntu with apt is what CI uses; the RHEL family (dnf) is best effort.
# Usage: scripts/install-system.sh            (as root; non-interactive)
set -euo pipefail

log() { printf 'install-system: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
    command -v sudo >/dev/null || die "not root and no sudo: run as root"
else
    SUDO=
fi

# Does the python3 that builds the venv have its C headers (needed to compile libvirt-python)?
python_has_headers() {
    python3 - <<'PY' 2>/dev/null
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
}

# Can the python3 that builds the venv create one with pip in it?
python_has_venv() {
    python3 -c 'import ensurepip, venv' 2>/dev/null
}

install_apt() {
    # Packages CI needs; libvirt-daemon-driver-qemu is split out on Debian >= 12 / recent Ubuntu
    # (on older releases the driver is inside libvirt-daemon): added only where it exists.
    # qemu-system-arm, -ppc and -misc (s390x among others): domain_cpu's tests and the corpus of
    # libvirt's test domains define aarch64, armv7l, ppc64 and s390x guests too (TCG, never started);
    # a fresh libvirtd then probes ~25 emulators once (about 20 s more for its first capabilities).
    local wanted=(
        libvirt-daemon-system
        libvirt-daemon-driver-qemu
        qemu-system-x86
        qemu-system-arm
        qemu-system-ppc
        qemu-system-misc
        qemu-utils
        ovmf
        libvirt-clients
        libxml2-utils
        libvirt-dev
        pkg-config
        gcc
        virtinst
        dpkg-dev
        shellcheck
        chromium
        git
        make
        debootstrap
    )
    python_has_headers || wanted+=(python3-dev)
    python_has_venv || wanted+=(python3-venv)

    local missing=() p
    for p in "${wanted[@]}"; do
        # dpkg -s succeeds for removed-but-not-purged packages too: check the status line.
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "all system packages present"
        return 0
    fi
    log "missing: ${missing[*]}"

    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q

    local installable=()
    for p in "${missing[@]}"; do
        if apt-cache show "$p" >/dev/null 2>&1; then
            installable+=("$p")
        elif [ "$p" = libvirt-daemon-driver-qemu ]; then
            log "no package $p on this release (the QEMU driver ships inside libvirt-daemon)"
        else
            die "package $p is not available from the configured apt sources"
        fi
    done
    [ "${#installable[@]}" -gt 0 ] || return 0
    # --no-install-recommends: exactly what CI was verified with, no desktop/GUI extras.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${installable[@]}"
    log "installed: ${installable[*]}"
}

install_dnf() {
    local wanted=(
        libvirt-daemon
        libvirt-daemon-driver-qemu
        libvirt-daemon-kvm
        qemu-kvm
        qemu-img
        edk2-ovmf
        libvirt-client
        libxml2
        libvirt-devel
        pkgconf-pkg-config
        gcc
        virt-install
        ShellCheck
        chromium
        git
        make
    )
    python_has_headers || wanted+=(python3-devel)

    local missing=() p
    for p in "${wanted[@]}"; do
        rpm -q "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "all system packages present"
        return 0
    fi
    log "missing: ${missing[*]}"
    # --skip-broken: best effort across RHEL/CentOS Stream/Fedora package splits.
    $SUDO dnf install -y --setopt=install_weak_deps=False --skip-broken "${missing[@]}"
}

if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
    install_apt
elif command -v dnf >/dev/null 2>&1; then
    install_dnf
else
    die "neither apt-get nor dnf found: install libvirt, QEMU, libvirt headers, pkg-config and gcc by hand"
fi

# libvirt-python's build finds libvirt through pkg-config: fail here, clearly, if it cannot.
pkg-config --exists libvirt || die "pkg-config cannot find libvirt (libvirt-dev / libvirt-devel missing?)"
