#!/usr/bin/env bash
# Build the collection's documentation site offline with antsibull-docs + Sphinx and lint the
# collection's docs; fail on any warning or error, printing their counts.
#
# 1. A collections directory with this checkout as hostcpu.libvirt and the collections galaxy.yml
#    depends on (from the `ansible` package of .venv), so that references to them resolve.
# 2. `antsibull-docs lint-collection-docs --plugin-docs .`: 0 errors.
# 3. `antsibull-docs sphinx-init` + `antsibull-docs collection` write the site's sources; conf.py
#    gets a local intersphinx inventory (scripts/docs_inventory.py) instead of the Ansible
#    docsite's, which would be downloaded.
# 4. `sphinx-build`, warnings written to a file and counted.
#
# Usage: scripts/docs.sh. Env: TOOLS (the release tools venv, make release-venv), VENV (.venv),
# DOCS (output, default .cache/docs; the site is $DOCS/site/build/html).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
DOCS=${DOCS:-$ROOT/.cache/docs}
: "${TOOLS:?set TOOLS to the release tools venv (make docs does)}"

log() { printf 'docs: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$TOOLS/bin/antsibull-docs" ] || die "no antsibull-docs in $TOOLS: run make release-venv"
[ -x "$VENV/bin/python" ] || die "no $VENV: run make venv"
export PATH=$TOOLS/bin:$PATH
export ANSIBLE_CONFIG=$ROOT/tests/release/ansible.cfg
unset PYTHONPATH

# --- 1. the collections ----------------------------------------------------------------------
COLLECTIONS=$DOCS/collections
rm -rf "$DOCS"
mkdir -p "$COLLECTIONS/ansible_collections/hostcpu"
ln -s "$ROOT" "$COLLECTIONS/ansible_collections/hostcpu/libvirt"
for fqcn in $("$TOOLS/bin/python" -c 'import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))["dependencies"])' "$ROOT/galaxy.yml"); do
    source=$("$VENV/bin/python" -c 'import importlib, sys; print(importlib.import_module("ansible_collections." + sys.argv[1]).__path__[0])' "$fqcn") ||
        die "$fqcn is not in $VENV (requirements.txt's ansible bundles it): run make venv"
    mkdir -p "$COLLECTIONS/ansible_collections/${fqcn%%.*}"
    ln -s "$source" "$COLLECTIONS/ansible_collections/${fqcn%%.*}/${fqcn#*.}"
done
export ANSIBLE_COLLECTIONS_PATH=$COLLECTIONS

# --- 2. lint ---------------------------------------------------------------------------------
log "antsibull-docs lint-collection-docs --plugin-docs"
if ! (cd "$ROOT" && antsibull-docs lint-collection-docs --plugin-docs .) >"$DOCS/lint.txt" 2>&1; then
    cat "$DOCS/lint.txt" >&2
    die "lint-collection-docs: $(grep -c . "$DOCS/lint.txt") errors"
fi
log "lint-collection-docs: 0 errors"

# --- 3. the site's sources -------------------------------------------------------------------
SITE=$DOCS/site
mkdir -m 700 "$SITE"   # antsibull-docs wants its directories writable only by their owner
antsibull-docs sphinx-init --use-current --squash-hierarchy --fail-on-error --dest-dir "$SITE" hostcpu.libvirt >/dev/null
"$TOOLS/bin/python" "$ROOT/scripts/docs_inventory.py" "$SITE/ansible_devel.inv"
cat >>"$SITE/conf.py" <<CONF

# Offline (scripts/docs.sh): the Ansible docsite labels antsibull-docs' pages link to come from a
# local inventory; nothing is downloaded.
intersphinx_mapping = {'ansible_devel': ('https://docs.ansible.com/projects/ansible/devel/', '$SITE/ansible_devel.inv')}
CONF
antsibull-docs --config-file "$SITE/antsibull-docs.cfg" collection --cleanup everything --fail-on-error \
    --use-current --squash-hierarchy --dest-dir "$SITE/rst" hostcpu.libvirt >/dev/null

# --- 4. Sphinx -------------------------------------------------------------------------------
sphinx-build -M html "$SITE/rst" "$SITE/build" -c "$SITE" -q --keep-going -w "$DOCS/warnings.txt" >"$DOCS/sphinx.log" 2>&1 ||
    { cat "$DOCS/sphinx.log" >&2; die "sphinx-build failed"; }
WARNINGS=$(grep -c 'WARNING' "$DOCS/warnings.txt" || true)
if [ "$WARNINGS" -ne 0 ]; then
    cat "$DOCS/warnings.txt" >&2
    die "sphinx-build: $WARNINGS warnings"
fi
log "sphinx-build: 0 warnings, $(find "$SITE/build/html" -name '*.html' | wc -l) pages in $SITE/build/html"
