#!/usr/bin/env bash
# Run `ansible-test sanity` on this checkout, offline except for the package index.
#
# 1. ansible-test installs pip into each virtual environment it makes with a get-pip.py that it
#    downloads from a host this machine cannot reach, unless a cached copy exists:
#    scripts/pip_bootstrap.py writes that cached copy from the pip wheel bundled with Python's
#    ensurepip (see DEVELOPERS.md, "ansible-test sanity offline").
# 2. ansible-test must run from .../ansible_collections/hostcpu/libvirt: the files git tracks or
#    would track (tracked + untracked-not-ignored) are copied there, under a temp directory.
# 3. `ansible-test sanity --venv --python X.Y`: a managed venv; the tests that need tools
#    (pylint, yamllint, validate-modules, ...) install them from the package index into venvs
#    cached under ~/.ansible/test/venv; its "changelog" test runs antsibull-changelog lint.
# tests/sanity/ignore-*.txt must stay empty: fix the code, not the ignore file.
#
# Usage: scripts/sanity.sh [extra ansible-test sanity args, e.g. --test pylint]
# Env: VENV (default ./.venv). Results of a failed run are kept in tests/output/sanity/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python

log() { printf 'sanity: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$VENV/bin/ansible-test" ] || die "no ansible-test in $VENV: run make venv"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# --- 1. the pip bootstrap ansible-test would download -------------------------------------
log "pip bootstrap: $("$PY" "$ROOT/scripts/pip_bootstrap.py")"

for f in "$ROOT"/tests/sanity/ignore-*.txt; do
    [ -e "$f" ] || continue
    if grep -qv '^[[:space:]]*$' "$f"; then
        die "${f#"$ROOT"/} is not empty: sanity problems are fixed in the code, never ignored"
    fi
done

# --- 2. a copy under ansible_collections/hostcpu/libvirt -----------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hostcpu-sanity.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEST=$WORK/ansible_collections/hostcpu/libvirt
mkdir -p "$DEST"
(
    cd "$ROOT"
    # Tracked files deleted in the work tree are listed by -c but no longer exist: skip them.
    git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
        if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
    done | tar --null --no-recursion --files-from=- -cf - | tar -xf - -C "$DEST"
)
log "copied $(find "$DEST" -type f | wc -l) files to $DEST"

# --- 3. ansible-test sanity ----------------------------------------------------------------
rc=0
(
    cd "$DEST"
    # ANSIBLE_COLLECTIONS_PATH from the Makefile would point at the checkout, not the copy.
    unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_CONFIG PYTHONPATH
    "$VENV/bin/ansible-test" sanity --venv --python "$PYVER" --color no "$@"
) || rc=$?

if [ "$rc" -ne 0 ]; then
    rm -rf "$ROOT/tests/output/sanity"
    mkdir -p "$ROOT/tests/output/sanity"
    cp -r "$DEST/tests/output/." "$ROOT/tests/output/sanity/" 2>/dev/null || true
    rm -rf "$ROOT/tests/output/sanity/.tmp"
    die "ansible-test sanity failed (exit $rc); results in tests/output/sanity/"
fi

log "ok"
