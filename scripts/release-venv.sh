#!/usr/bin/env bash
# Make (or reuse) a virtual environment for a pinned requirements file and print its path:
# $HOSTCPU_CACHE/release/<name>-<hash>, the hash over the file and the Python version, so a
# changed pin builds a new venv and an unchanged one is reused across fresh clones.
#
# Usage: scripts/release-venv.sh NAME REQUIREMENTS_FILE
# Env: HOSTCPU_CACHE (default /var/cache/hostcpu-libvirt), PYTHON (default python3).
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 NAME REQUIREMENTS_FILE" >&2; exit 2; }
NAME=$1
REQUIREMENTS=$2
CACHE=${HOSTCPU_CACHE:-/var/cache/hostcpu-libvirt}/release
PYTHON=${PYTHON:-python3}

log() { printf 'release-venv: %s\n' "$*" >&2; }

[ -r "$REQUIREMENTS" ] || { log "ERROR: no requirements file $REQUIREMENTS"; exit 1; }
HASH=$({ "$PYTHON" --version; cat "$REQUIREMENTS"; } | sha256sum | cut -c1-16)
VENV=$CACHE/$NAME-$HASH

if [ ! -e "$VENV/.complete" ]; then
    log "building $VENV from $REQUIREMENTS ($("$PYTHON" --version))"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --requirement "$REQUIREMENTS" 2>&1 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
    "$VENV/bin/python" -m pip check >&2
    touch "$VENV/.complete"
fi
echo "$VENV"
