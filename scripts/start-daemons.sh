#!/usr/bin/env bash
# Make libvirt + QEMU usable on this machine, idempotently:
#   1. /dev/kvm (when present) owned by group kvm, mode 660, and the QEMU user in group kvm,
#      so guests of virt type kvm can start; without /dev/kvm only TCG (virt type qemu) exists.
#   2. The daemons: with systemd running, through systemctl (monolithic libvirtd, or the modular
#      virtqemud where that is what the distribution uses); without systemd, virtlogd and
#      libvirtd (or virtqemud) started directly with -d, unless already running.
#   3. A bounded wait until `virsh -c qemu:///system version` answers.
# A daemon that is already running is never stopped or restarted (others may be using it).
# Usage: scripts/start-daemons.sh     (as root)   Env: DAEMON_WAIT_SECONDS (default 60)
set -euo pipefail

URI=qemu:///system
WAIT_SECONDS=${DAEMON_WAIT_SECONDS:-60}

log() { printf 'start-daemons: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it changes /dev/kvm and starts system daemons)"
command -v virsh >/dev/null || die "virsh not found: run scripts/install-system.sh (make system) first"

# --- 1. /dev/kvm ----------------------------------------------------------------------------
qemu_user() {
    # The user QEMU runs as: qemu.conf's `user = "..."` if set, else the distribution default.
    local u
    u=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' /etc/libvirt/qemu.conf 2>/dev/null | tail -n1)
    if [ -n "$u" ] && [ "$u" != "+0" ] && [ "$u" != root ]; then
        echo "$u"; return
    fi
    for u in libvirt-qemu qemu; do  # Debian/Ubuntu, RHEL/Fedora
        if id -u "$u" >/dev/null 2>&1; then echo "$u"; return; fi
    done
}

setup_kvm() {
    if [ ! -e /dev/kvm ]; then
        log "/dev/kvm absent: only TCG (virt type qemu) guests will run"
        return 0
    fi
    getent group kvm >/dev/null || groupadd --system kvm
    if [ "$(stat -c %G /dev/kvm)" != kvm ]; then chgrp kvm /dev/kvm; fi
    if [ "$(stat -c %a /dev/kvm)" != 660 ]; then chmod 0660 /dev/kvm; fi
    local u
    u=$(qemu_user)
    if [ -n "$u" ] && ! id -nG "$u" | tr ' ' '\n' | grep -qx kvm; then
        usermod -a -G kvm "$u"
        log "added $u to group kvm"
    fi
    log "/dev/kvm: $(stat -c '%U:%G %a' /dev/kvm)${u:+, QEMU runs as $u ($(id -nG "$u"))}"
}

# --- 2. daemons -----------------------------------------------------------------------------
# running NAME: true when /run/NAME.pid names a live process whose command is NAME.
running() {
    local name=$1 pid
    [ -r "/run/$name.pid" ] || return 1
    pid=$(cat "/run/$name.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]
}

# find_bin NAME: path of a daemon binary (sbin may be missing from a non-login PATH).
find_bin() {
    local d
    if command -v "$1" 2>/dev/null; then return 0; fi
    for d in /usr/sbin /usr/bin /usr/local/sbin; do
        if [ -x "$d/$1" ]; then echo "$d/$1"; return 0; fi
    done
    return 0
}

# start_direct NAME SOCKET: start NAME -d unless it is running (pid file + live process).
start_direct() {
    local name=$1 sock=$2 bin
    if running "$name"; then
        [ -S "$sock" ] || log "$name runs (pid $(cat "/run/$name.pid")) but $sock is missing"
        log "$name already running (pid $(cat "/run/$name.pid"))"
        return 0
    fi
    bin=$(find_bin "$name")
    [ -n "$bin" ] || die "$name not found: run scripts/install-system.sh (make system) first"
    # A pid file left behind by a dead daemon is not a lock held by anyone: the daemon replaces it.
    "$bin" -d || die "$bin -d failed (see /var/log/libvirt/ and the messages above)"
    log "started $name"
}

have_unit() { systemctl list-unit-files "$1" --no-legend 2>/dev/null | grep -q "^$1"; }

if [ -d /run/systemd/system ]; then
    setup_kvm
    # Modular daemons when the distribution enabled them (Fedora, RHEL 9+), else libvirtd.
    if have_unit virtqemud.socket && ! systemctl is-enabled --quiet libvirtd.service 2>/dev/null \
        && ! systemctl is-active --quiet libvirtd.service; then
        log "systemd: starting virtlogd.socket virtqemud.socket"
        systemctl start virtlogd.socket virtqemud.socket
    else
        log "systemd: starting virtlogd libvirtd"
        systemctl start virtlogd libvirtd
    fi
else
    setup_kvm
    start_direct virtlogd /run/libvirt/virtlogd-sock
    if [ -n "$(find_bin libvirtd)" ]; then
        start_direct libvirtd /run/libvirt/libvirt-sock
    else
        start_direct virtqemud /run/libvirt/virtqemud-sock
    fi
fi

# --- 3. wait until the driver answers -------------------------------------------------------
deadline=$((SECONDS + WAIT_SECONDS))
until out=$(timeout 10 virsh -c "$URI" version 2>&1); do
    if [ "$SECONDS" -ge "$deadline" ]; then
        printf '%s\n' "$out" >&2
        die "libvirt did not answer on $URI within ${WAIT_SECONDS}s (see /var/log/libvirt/ and \`virsh -c $URI version\`)"
    fi
    sleep 1
done
log "libvirt answers on $URI: $(printf '%s\n' "$out" | grep -E 'library|hypervisor' | tr -s ' ' | paste -sd';' -)"
