#!/usr/bin/env bash
# Give a chroot tree its own root mount, /dev, /dev/pts, /dev/shm, /proc and /sys, then run a
# command chrooted in it. Must run in a private mount namespace of its own, made by
#   unshare --mount --uts --propagation private scripts/testbed/ns.sh TREE HOSTNAME COMMAND...
# so that every mount here disappears with the namespace and none reaches this machine.
# Nothing of the machine's /dev is mounted into the tree: its /dev is a tmpfs with nodes made by
# mknod (same numbers as the machine's), its ptys a devpts instance of its own.
# HOSTNAME '-' keeps the hostname (no UTS namespace needed).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -ge 3 ] || die "usage: ns.sh TREE HOSTNAME COMMAND..."
tree=$1 host=$2
shift 2

[ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] ||
    die "ns.sh runs in the machine's own mount namespace: start it through unshare --mount --propagation private"
[ -d "$tree/etc" ] || die "$tree is not a chroot tree"

# mknod_like NAME MODE: the tree's /dev/NAME with the machine's device numbers for NAME.
mknod_like() {
    local name=$1 mode=$2 major minor
    [ -c "/dev/$name" ] || return 0
    major=$((16#$(stat -c %t "/dev/$name")))
    minor=$((16#$(stat -c %T "/dev/$name")))
    mkdir -p "$(dirname "$tree/dev/$name")"
    mknod -m "$mode" "$tree/dev/$name" c "$major" "$minor"
}

mount --make-rprivate /
# libvirt needs "/" to be a mount point of its own.
mount --bind "$tree" "$tree"
mount -t tmpfs -o mode=0755,size=8m,nosuid testbed-dev "$tree/dev"
for node in null zero full random urandom tty; do
    mknod_like "$node" 0666
done
mknod_like net/tun 0666
if [ -c /dev/kvm ]; then
    mknod_like kvm 0660
    kvm_gid=$(chroot "$tree" getent group kvm | cut -d: -f3) || kvm_gid=
    if [ -n "$kvm_gid" ]; then chgrp "$kvm_gid" "$tree/dev/kvm"; fi
fi
mkdir "$tree/dev/pts" "$tree/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$tree/dev/pts"
ln -s pts/ptmx "$tree/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev testbed-shm "$tree/dev/shm"
ln -s /proc/self/fd "$tree/dev/fd"
ln -s /proc/self/fd/0 "$tree/dev/stdin"
ln -s /proc/self/fd/1 "$tree/dev/stdout"
ln -s /proc/self/fd/2 "$tree/dev/stderr"
mount -t proc proc "$tree/proc"
# A fresh sysfs: no cgroup hierarchy in it, so the host's libvirt runs without cgroups.
mount -t sysfs sysfs "$tree/sys"
if [ "$host" != - ]; then
    hostname "$host"
fi
# A clean environment: nothing of the caller (venv PATH, make variables) reaches the host.
exec chroot "$tree" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
