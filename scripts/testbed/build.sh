#!/usr/bin/env bash
# Build the chroot trees of the testbed (one per suite of hosts.conf) under
# $HOSTCPU_CACHE/testbed/<suite>, the missing ones in parallel: debootstrap (minbase) from this
# machine's Debian mirror, then libvirt, QEMU, sshd and Python with libvirt-python and lxml by apt.
# A tree whose stamp matches the recipe below is reused as it is; a tree built by another recipe
# is rebuilt (stop the testbed first). Daemons are configured at start (start.sh), not here.
# Usage: scripts/testbed/build.sh [SUITE...]     (as root)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# What goes into every tree. Packages that only some suites have are added where they exist.
PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils seabios openssh-server
          python3 python3-libvirt python3-lxml)
OPTIONAL_PACKAGES=(libvirt-daemon-driver-qemu libvirt-daemon-system-sysv)
RECIPE="1 ${PACKAGES[*]} / ${OPTIONAL_PACKAGES[*]}"

recipe_key() { printf '%s %s\n' "$1" "$RECIPE" | sha256sum | cut -c1-16; }

tree_is_current() {
    local suite=$1 tree
    tree=$(tree_of "$suite")
    [ "$(cat "$tree/.testbed-recipe" 2>/dev/null)" = "$(recipe_key "$suite")" ]
}

# in_tree TREE COMMAND...: run COMMAND chrooted in TREE, in a mount namespace of its own.
in_tree() {
    local tree=$1
    shift
    unshare --mount --propagation private "$TESTBED_DIR/ns.sh" "$tree" - "$@"
}

# kill_strays TREE: package scripts must not leave a process behind in the tree.
kill_strays() {
    local pid
    for pid in $(tree_pids "$1"); do
        log "stopping process $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) left in $1 by the install"
        kill "$pid" 2>/dev/null || true
    done
}

build_one() {
    local suite=$1 tree partial mirror optional=() p start=$SECONDS
    tree=$(tree_of "$suite")
    partial=$tree.partial
    mirror=$(debian_mirror)
    if [ -n "$(tree_pids "$tree")" ]; then
        die "$suite: its tree $tree is out of date but running: make testbed-stop first"
    fi
    # A partial tree that debootstrap finished is taken up again (the apt step is idempotent).
    if [ ! -f "$partial/.testbed-debootstrapped" ]; then
        rm -rf "$partial"
        log "$suite: debootstrap"
        # debootstrap mounts /proc and /sys in the tree: a private mount namespace keeps them there.
        unshare --mount --propagation private \
            debootstrap --variant=minbase --include=ca-certificates "$suite" "$partial" "$mirror"
        touch "$partial/.testbed-debootstrapped"
    fi
    printf '#!/bin/sh\n# testbed: package scripts start no daemon here (start.sh does)\nexit 101\n' \
        > "$partial/usr/sbin/policy-rc.d"
    chmod 0755 "$partial/usr/sbin/policy-rc.d"
    cat > "$partial/etc/apt/apt.conf.d/90testbed" <<'APT'
// testbed: sid's Release file may be past its Valid-Until; no recommends, a few retries.
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
Acquire::Retries "3";
Acquire::Languages "none";
APT
    in_tree "$partial" apt-get update -q
    for p in "${OPTIONAL_PACKAGES[@]}"; do
        if in_tree "$partial" apt-cache show "$p" >/dev/null 2>&1; then optional+=("$p"); fi
    done
    log "$suite: apt-get install ${PACKAGES[*]} ${optional[*]}"
    in_tree "$partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${PACKAGES[@]}" "${optional[@]}"
    in_tree "$partial" apt-get clean
    kill_strays "$partial"
    rm -f "$partial/.testbed-debootstrapped"
    recipe_key "$suite" > "$partial/.testbed-recipe"
    rm -rf "$tree"
    mv "$partial" "$tree"
    log "$suite: built in $((SECONDS - start)) s, $(du -sh "$tree" | cut -f1)"
}

main() {
    require_root
    command -v debootstrap >/dev/null || die "debootstrap missing: make system installs it"
    mkdir -p "$TESTBED_CACHE"
    local wanted=("$@") suite pids=() names=() i failed=0
    [ ${#wanted[@]} -gt 0 ] || mapfile -t wanted < <(suites)
    for suite in "${wanted[@]}"; do
        if tree_is_current "$suite"; then
            log "$suite: tree $(tree_of "$suite") reused"
            continue
        fi
        build_one "$suite" > "$TESTBED_CACHE/$suite.build.log" 2>&1 &
        pids+=($!)
        names+=("$suite")
        log "$suite: building (log: $TESTBED_CACHE/$suite.build.log)"
    done
    for i in "${!pids[@]}"; do
        if wait "${pids[$i]}"; then
            tail -n1 "$TESTBED_CACHE/${names[$i]}.build.log" >&2
        else
            failed=1
            log "${names[$i]}: build FAILED, last lines of its log:"
            tail -n 25 "$TESTBED_CACHE/${names[$i]}.build.log" >&2
        fi
    done
    [ "$failed" -eq 0 ] || die "a tree did not build"
}

main "$@"
