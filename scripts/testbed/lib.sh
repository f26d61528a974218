# shellcheck shell=bash
# Shared by the testbed scripts: where the trees live, which hosts exist, logging.
# Env: HOSTCPU_CACHE (default /var/cache/hostcpu-libvirt).

TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTCPU_CACHE=${HOSTCPU_CACHE:-/var/cache/hostcpu-libvirt}
TESTBED_CACHE=$HOSTCPU_CACHE/testbed
# shellcheck disable=SC2034  # used by the scripts that source this file
SSH_KEY=$TESTBED_CACHE/id_ed25519
# shellcheck disable=SC2034
KNOWN_HOSTS=$TESTBED_CACHE/known_hosts
# shellcheck disable=SC2034
INVENTORY=$TESTBED_CACHE/inventory.ini

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it builds chroots and starts daemons)"
}

# suites: the chroot hosts' suite names, in hosts.conf order.
suites() {
    sed -e 's/#.*//' "$TESTBED_DIR/hosts.conf" | awk 'NF { print $1 }'
}

# ssh_port SUITE: the sshd port of that host.
ssh_port() {
    local port
    port=$(sed -e 's/#.*//' "$TESTBED_DIR/hosts.conf" | awk -v s="$1" '$1 == s { print $2 }')
    [ -n "$port" ] || die "suite $1 is not in $TESTBED_DIR/hosts.conf"
    echo "$port"
}

tree_of() { echo "$TESTBED_CACHE/$1"; }
host_name_of() { echo "testbed-$1"; }

# tree_pids TREE: the processes whose root directory is TREE (the host's daemons and guests).
tree_pids() {
    local tree=$1 link pid
    for link in /proc/[0-9]*/root; do
        pid=${link#/proc/}
        pid=${pid%/root}
        [ "$(readlink "$link" 2>/dev/null)" = "$tree" ] && echo "$pid"
    done
    return 0
}

# daemon_pid TREE NAME: the pid of NAME (virtlogd, libvirtd, sshd) of that host, if it runs.
daemon_pid() {
    local tree=$1 name=$2 pid
    pid=$(cat "$tree/run/$name.pid" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$tree" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 1
    echo "$pid"
}

# debian_mirror: the first Debian archive URI of this machine's apt sources.
debian_mirror() {
    local src=/etc/apt/sources.list.d/debian.sources uri
    if [ -r "$src" ]; then
        uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$src")
    fi
    if [ -z "${uri:-}" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' /etc/apt/sources.list)
    fi
    [ -n "${uri:-}" ] || die "no Debian mirror in $src or /etc/apt/sources.list"
    echo "$uri"
}
