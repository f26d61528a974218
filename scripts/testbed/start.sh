#!/usr/bin/env bash
# Start the testbed hosts (build.sh first): for each chroot tree, its configuration (hostname,
# host_uuid, qemu.conf without namespaces, no autostarted network, sshd on 127.0.0.1 with the
# testbed's key) and, inside a mount + UTS namespace of its own, its virtlogd, libvirtd and sshd.
# Idempotent: a daemon that runs is left alone, one that does not is started (in the host's
# existing namespace when the host has one). Writes the inventory at the end (inventory.sh).
# Usage: scripts/testbed/start.sh [SUITE...]     (as root)   Env: TESTBED_WAIT_SECONDS (60)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WAIT_SECONDS=${TESTBED_WAIT_SECONDS:-60}

# write_if_changed FILE: stdin into FILE, unless FILE already holds exactly that.
write_if_changed() {
    local file=$1 new
    new=$(cat)
    [ -f "$file" ] && [ "$(cat "$file")" = "$new" ] && return 0
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$new" > "$file"
}

ensure_ssh_key() {
    [ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C testbed -f "$SSH_KEY"
}

configure() {
    local suite=$1 tree name port uuid
    tree=$(tree_of "$suite")
    name=$(host_name_of "$suite")
    port=$(ssh_port "$suite")
    [ -f "$tree/.testbed-recipe" ] || die "$suite: no tree at $tree: run scripts/testbed/build.sh (make testbed)"

    [ -s "$tree/etc/libvirt/testbed-host-uuid" ] ||
        cat /proc/sys/kernel/random/uuid > "$tree/etc/libvirt/testbed-host-uuid"
    uuid=$(cat "$tree/etc/libvirt/testbed-host-uuid")
    echo "$name" | write_if_changed "$tree/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$name" | write_if_changed "$tree/etc/hosts"
    write_if_changed "$tree/etc/libvirt/libvirtd.conf" <<CONF
# testbed host $name: its own identity (migration refuses "the same host" otherwise)
host_uuid = "$uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
    write_if_changed "$tree/etc/libvirt/qemu.conf" <<'CONF'
# testbed host: QEMU gets no private /dev (it would be built from the machine's devices),
# no cgroups (the host's sysfs has none) and no security driver.
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
CONF
    rm -f "$tree"/etc/libvirt/qemu/networks/autostart/*.xml

    chroot "$tree" getent group kvm >/dev/null || chroot "$tree" groupadd --system kvm
    if chroot "$tree" id libvirt-qemu >/dev/null 2>&1 &&
        ! chroot "$tree" id -nG libvirt-qemu | tr ' ' '\n' | grep -qx kvm; then
        chroot "$tree" usermod -a -G kvm libvirt-qemu
    fi

    write_if_changed "$tree/etc/ssh/sshd_config.d/testbed.conf" <<CONF
# testbed host $name: loopback only, key authentication only
Port $port
ListenAddress 127.0.0.1
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
CONF
    install -d -m 0700 "$tree/root/.ssh"
    write_if_changed "$tree/root/.ssh/authorized_keys" < "$SSH_KEY.pub"
    chmod 0600 "$tree/root/.ssh/authorized_keys"
}

# daemon_command NAME: how the host starts NAME (chrooted, in its namespace).
daemon_command() {
    case $1 in
        virtlogd) echo "/usr/sbin/virtlogd -d" ;;
        libvirtd) echo "/usr/sbin/libvirtd -d" ;;
        sshd) echo "mkdir -p -m 0755 /run/sshd && exec /usr/sbin/sshd" ;;
    esac
}

start_host() {
    local suite=$1 tree name missing=() d first cmd="" running=()
    tree=$(tree_of "$suite")
    name=$(host_name_of "$suite")
    for d in virtlogd libvirtd sshd; do
        daemon_pid "$tree" "$d" >/dev/null || missing+=("$d")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "$suite: running (virtlogd $(daemon_pid "$tree" virtlogd), libvirtd $(daemon_pid "$tree" libvirtd), sshd $(daemon_pid "$tree" sshd))"
        return 0
    fi
    for d in "${missing[@]}"; do
        rm -f "$tree/run/$d.pid"
        cmd+="$(daemon_command "$d") && "
    done
    cmd+=true
    mapfile -t running < <(tree_pids "$tree")
    first=${running[0]:-}
    if [ -n "$first" ]; then
        log "$suite: starting ${missing[*]} in its namespace (process $first)"
        nsenter --target "$first" --mount --uts chroot "$tree" /usr/bin/env -i \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 /bin/sh -c "$cmd"
    else
        log "$suite: starting ${missing[*]} in a new namespace, hostname $name"
        rm -f "$tree"/run/libvirt/*-sock* "$tree"/run/*.pid
        unshare --mount --uts --propagation private "$TESTBED_DIR/ns.sh" "$tree" "$name" /bin/sh -c "$cmd"
    fi
}

# wait_ready SUITE: libvirtd answers on its socket and sshd accepts the testbed's key.
wait_ready() {
    local suite=$1 tree port deadline
    tree=$(tree_of "$suite")
    port=$(ssh_port "$suite")
    deadline=$((SECONDS + WAIT_SECONDS))
    until virsh -q -c "qemu+unix:///system?socket=$tree/run/libvirt/libvirt-sock" version >/dev/null 2>&1 &&
        ssh -q -p "$port" -i "$SSH_KEY" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null root@127.0.0.1 true 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "$suite: not ready after ${WAIT_SECONDS}s (see $tree/var/log/libvirt/libvirtd.log)"
        sleep 0.5
    done
}

main() {
    require_root
    local wanted=("$@") suite
    [ ${#wanted[@]} -gt 0 ] || mapfile -t wanted < <(suites)
    ensure_ssh_key
    for suite in "${wanted[@]}"; do
        configure "$suite"
        start_host "$suite"
    done
    for suite in "${wanted[@]}"; do
        wait_ready "$suite"
    done
    "$TESTBED_DIR/inventory.sh"
}

main "$@"
