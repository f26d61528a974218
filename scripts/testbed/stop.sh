#!/usr/bin/env bash
# Stop the testbed hosts: their guests (virsh destroy), then every process whose root is the
# host's tree (its daemons), so that each host's mount namespace, and every mount in it, goes
# away. Removes no tree. Usage: scripts/testbed/stop.sh [SUITE...]     (as root)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_host() {
    local suite=$1 tree uri dom pids deadline
    tree=$(tree_of "$suite")
    pids=$(tree_pids "$tree")
    if [ -z "$pids" ]; then
        log "$suite: not running"
        return 0
    fi
    uri="qemu+unix:///system?socket=$tree/run/libvirt/libvirt-sock"
    for dom in $(virsh -q -c "$uri" list --name 2>/dev/null); do
        log "$suite: destroying guest $dom"
        virsh -q -c "$uri" destroy "$dom" >/dev/null || true
    done
    # shellcheck disable=SC2086  # one pid a word
    kill $pids 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while pids=$(tree_pids "$tree") && [ -n "$pids" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "$suite: killing what is left: $pids"
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
        sleep 0.3
    done
    log "$suite: stopped"
}

main() {
    require_root
    local wanted=("$@") suite
    [ ${#wanted[@]} -gt 0 ] || mapfile -t wanted < <(suites)
    for suite in "${wanted[@]}"; do
        stop_host "$suite"
    done
}

main "$@"
