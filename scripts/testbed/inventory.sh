#!/usr/bin/env bash
# Write the testbed's Ansible inventory ($HOSTCPU_CACHE/testbed/inventory.ini) and its
# known_hosts, then print the inventory. The chroot hosts are reached over SSH on 127.0.0.1 with
# the testbed's key and their own /usr/bin/python3; this machine is the local host.
# testbed_libvirt_uri is how this machine reaches each host's libvirtd (tests, migration).
# Usage: scripts/testbed/inventory.sh
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

local_suite() {
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "${VERSION_CODENAME:-local}")
}

write_known_hosts() {
    local suite tree port key
    for suite in $(suites); do
        tree=$(tree_of "$suite")
        port=$(ssh_port "$suite")
        for key in "$tree"/etc/ssh/ssh_host_*_key.pub; do
            [ -f "$key" ] && printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1-2 "$key")"
        done
    done > "$KNOWN_HOSTS.tmp"
    mv "$KNOWN_HOSTS.tmp" "$KNOWN_HOSTS"
}

write_inventory() {
    local suite tree here
    here=$(local_suite)
    {
        echo "# The testbed (scripts/testbed): written by inventory.sh, do not edit."
        echo "[testbed_chroots]"
        for suite in $(suites); do
            tree=$(tree_of "$suite")
            printf '%s ansible_host=127.0.0.1 ansible_port=%s testbed_suite=%s testbed_tree=%s testbed_libvirt_uri="qemu+unix:///system?socket=%s/run/libvirt/libvirt-sock"\n' \
                "$(host_name_of "$suite")" "$(ssh_port "$suite")" "$suite" "$tree" "$tree"
        done
        echo
        echo "[testbed_chroots:vars]"
        echo "ansible_connection=ssh"
        echo "ansible_user=root"
        echo "ansible_python_interpreter=/usr/bin/python3"
        echo "ansible_ssh_private_key_file=$SSH_KEY"
        echo "ansible_ssh_common_args='-o UserKnownHostsFile=$KNOWN_HOSTS -o StrictHostKeyChecking=yes -o BatchMode=yes'"
        echo
        echo "[testbed_local]"
        printf '%s ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}" testbed_suite=%s testbed_tree=/ testbed_libvirt_uri="qemu:///system"\n' \
            "$(host_name_of "$here")" "$here"
        echo
        echo "[testbed:children]"
        echo "testbed_chroots"
        echo "testbed_local"
    } > "$INVENTORY.tmp"
    mv "$INVENTORY.tmp" "$INVENTORY"
}

main() {
    mkdir -p "$TESTBED_CACHE"
    write_known_hosts
    write_inventory
    log "inventory: $INVENTORY"
    cat "$INVENTORY"
}

main "$@"
