#!/usr/bin/env bash
# shellcheck disable=SC2317  # the step_* functions are called by name (run_step)
# make matrix: every supported ansible-core version, each in its own venv, through
#   venv    build (or reuse) $HOSTCPU_CACHE/matrix/<core>-py<python> from tests/matrix/requirements-<core>.txt
#   unit    pytest tests/unit
#   doc     ansible-doc renders every module, filter, test and role of the collection
#   smoke   tests/smoke/playbook.yml against this machine's libvirtd (qemu:///system)
#   sanity  ansible-test sanity with the empty tests/sanity/ignore-<core>.txt (scripts/sanity.sh)
# The cells are listed in tests/matrix/cells.txt (ansible-core version, Python version). A table of
# cell x step (pass/FAIL, seconds) is printed at the end and written to tests/output/matrix/table.md;
# each step's log is tests/output/matrix/<core>/<step>.log. Any failing step fails the run, and the
# end of its log is printed.
#
# Usage: scripts/matrix.sh [CORE...]      e.g. scripts/matrix.sh 2.19 2.21 (default: every cell)
# Env:   HOSTCPU_CACHE (default /var/cache/hostcpu-libvirt), MATRIX_JOBS (cells at once, default 2),
#        MATRIX_URI (default qemu:///system), MATRIX_STEPS (default "venv unit doc smoke sanity"; venv
#        always runs first).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${HOSTCPU_CACHE:-/var/cache/hostcpu-libvirt}/matrix
OUT=$ROOT/tests/output/matrix
JOBS=${MATRIX_JOBS:-2}
URI=${MATRIX_URI:-qemu:///system}
read -r -a STEPS <<<"${MATRIX_STEPS:-venv unit doc smoke sanity}"
# Shared with other users of ansible-test's ~/.ansible/test venvs on this machine; sanity is the
# last step, so that a cell waiting for this lock has done the rest of its work.
SANITY_LOCK=/tmp/hostcpu-sanity.lock

log() { printf 'matrix: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- which Python runs a cell ------------------------------------------------------------------

# A python executable of version $1 (X.Y) that really runs: pythonX.Y or python3 on PATH (a pyenv
# shim of a version that is not selected fails, so each candidate is asked), else pyenv's.
find_python() {
    local want=$1 candidate found
    for candidate in "python$want" python3 /root/.pyenv/versions/"$want"*/bin/python3 \
                     "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want"*/bin/python3; do
        # The real interpreter, not a shim or a venv's link to it.
        found=$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2], getattr(sys, "_base_executable", sys.executable))' 2>/dev/null) || continue
        if [ "${found%% *}" = "$want" ]; then
            echo "${found#* }"
            return 0
        fi
    done
    return 1
}

# --- the steps of one cell -------------------------------------------------------------------

# venv $core $python $venv: (re)build the cell's venv unless its key (the requirements file's hash
# and the exact Python) matches the one it was built with.
step_venv() {
    local core=$1 python=$2 venv=$3 requirements key
    requirements=$ROOT/tests/matrix/requirements-$core.txt
    key="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])') $python"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.matrix-key" 2>/dev/null)" = "$key" ]; then
        echo "reusing $venv ($key)"
        return 0
    fi
    echo "building $venv with $python from ${requirements#"$ROOT"/}"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --requirement "$requirements"
    "$venv/bin/python" -m pip check
    echo "$key" > "$venv/.matrix-key"
}

step_sanity() {
    local venv=$1
    VENV=$venv PATH="$venv/bin:$PATH" bash "$ROOT/scripts/sanity.sh"
}

step_unit() {
    local venv=$1
    (cd "$ROOT" && "$venv/bin/python" -m pytest -rs -q -p no:cacheprovider tests/unit)
}

names_in() {  # names_in DIR FIND-TESTS...: the names of DIR's entries that pass the tests, sorted
    local dir=$1
    shift
    find "$ROOT/$dir" -mindepth 1 -maxdepth 1 "$@" -printf '%f\n' | sort
}

# ansible-doc -l --json on stdin: the short names, sorted; a plugin listed as UNDOCUMENTED is left out.
LISTED_NAMES='
import json, sys
listed = json.load(sys.stdin)
print("\n".join(sorted(name.split(".", 2)[2] for name, doc in listed.items() if doc != "UNDOCUMENTED")))
'

# Each plugin the collection's files define must be listed by ansible-doc and render as text.
step_doc() {
    local venv=$1 type name expected listed text failed=0 fqcns
    text=$(mktemp)
    for type in module filter test role; do
        case $type in
            module) expected=$(names_in plugins/modules -name '*.py' | sed 's/\.py$//') ;;
            filter) expected=$(names_in plugins/filter -name '*.yml' | sed 's/\.yml$//') ;;
            test) expected=$(names_in plugins/test -name '*.yml' | sed 's/\.yml$//') ;;
            role) expected=$(names_in roles -type d) ;;
        esac
        listed=$("$venv/bin/ansible-doc" -t "$type" -l hostcpu.libvirt --json | "$venv/bin/python" -c "$LISTED_NAMES")
        if [ "$listed" != "$(sort <<<"$expected")" ]; then
            echo "ansible-doc -t $type -l lists: $(echo "$listed" | tr '\n' ' ')"
            echo "                   the files have: $(echo "$expected" | sort | tr '\n' ' ')"
            failed=1
        fi
        # All of a type in one ansible-doc run (a run costs seconds); each must have its own page.
        # Warnings about others' collections (2.20+ warns of its internal _protomatter) pass.
        mapfile -t fqcns <<<"$expected"
        fqcns=("${fqcns[@]/#/hostcpu.libvirt.}")
        if ! ANSIBLE_NOCOLOR=1 "$venv/bin/ansible-doc" -t "$type" "${fqcns[@]}" > "$text" 2>&1 \
                || grep -q '^\[ERROR\]\|^ERROR\|^\[WARNING\].*\(hostcpu\.libvirt\|ansible_collections/hostcpu/\)' "$text"; then
            echo "FAIL ansible-doc -t $type:"; cat "$text"
            failed=1
            continue
        fi
        for name in $expected; do
            if grep -qi "^> .*hostcpu\.libvirt\.$name\b" "$text"; then
                echo "ok   $type hostcpu.libvirt.$name"
            else
                echo "FAIL $type hostcpu.libvirt.$name: no page in the output of ansible-doc -t $type"
                failed=1
            fi
        done
        echo "     ($type: $(wc -l < "$text") lines in all)"
    done
    rm -f "$text"
    return "$failed"
}

# The smoke playbook removes its own domains; anything left with its prefix fails the step.
step_smoke() {
    local venv=$1 prefix=$2 left rc=0
    (cd "$ROOT" && "$venv/bin/ansible-playbook" -i localhost, tests/smoke/playbook.yml \
        -e hostcpu_smoke_python="$venv/bin/python" -e hostcpu_smoke_prefix="$prefix" \
        -e hostcpu_smoke_uri="$URI") || rc=$?
    left=$(virsh -c "$URI" list --all --name | grep "^$prefix" || true)
    if [ -n "$left" ]; then
        echo "domains left behind, removing them: $left"
        for name in $left; do
            virsh -c "$URI" destroy "$name" >/dev/null 2>&1 || true
            virsh -c "$URI" undefine "$name" >/dev/null || true
        done
        rc=1
    fi
    return "$rc"
}

# run_step $core $step args...: runs step_$step, its output in $OUT/$core/$step.log, its status and
# seconds in $OUT/$core/$step.result. The sanity step waits for the shared lock first (not timed).
run_step() {
    local core=$1 step=$2 start rc=0 lock_fd
    shift 2
    if [ "$step" = sanity ]; then
        exec {lock_fd}>"$SANITY_LOCK"
        flock "$lock_fd"
    fi
    start=$SECONDS
    # In the background, so that `set -e` holds inside the step (it is off in a `cmd || ...`).
    "step_$step" "$@" > "$OUT/$core/$step.log" 2>&1 &
    wait "$!" || rc=$?
    [ "$step" = sanity ] && exec {lock_fd}>&-
    echo "$([ "$rc" -eq 0 ] && echo pass || echo FAIL) $((SECONDS - start))" > "$OUT/$core/$step.result"
    log "$core $step: $(cat "$OUT/$core/$step.result")s"
    return "$rc"
}

run_cell() {
    local core=$1 pyver=$2 python venv
    mkdir -p "$OUT/$core"
    if ! python=$(find_python "$pyver"); then
        echo "no Python $pyver: neither python$pyver nor python3 on PATH is $pyver and no /root/.pyenv/versions/$pyver*/bin/python3 runs" \
            > "$OUT/$core/venv.log"
        echo "FAIL 0" > "$OUT/$core/venv.result"
        log "$core venv: FAIL (no Python $pyver: install it, e.g. pyenv install $pyver)"
        return 1
    fi
    venv=$CACHE/$core-py$pyver
    # One run at a time per cell venv (another checkout may run the matrix too).
    exec {cell_fd}>"$CACHE/$core-py$pyver.lock"
    flock "$cell_fd"
    rm -f "$OUT/$core"/*.result
    run_step "$core" venv "$core" "$python" "$venv" || return 1
    local step
    for step in "${STEPS[@]}"; do
        case $step in
            venv) ;;
            smoke) run_step "$core" smoke "$venv" "hostcpu-smoke-${core//./-}-$$-" || true ;;
            *) run_step "$core" "$step" "$venv" || true ;;
        esac
    done
}

# --- the table -------------------------------------------------------------------------------

cell_version() {  # the exact ansible-core and Python of a built cell
    local venv=$1
    "$venv/bin/python" -c 'import sys, ansible.release as r; print(r.__version__, sys.version.split()[0])' 2>/dev/null || echo "? ?"
}

write_table() {
    local core pyver step result failed=0 versions
    {
        echo "| ansible-core | Python |$(printf ' %s |' "${STEPS[@]}")"
        echo "|---|---|$(for _ in "${STEPS[@]}"; do printf -- '---|'; done)"
        while read -r core pyver; do
            read -r -a versions <<<"$(cell_version "$CACHE/$core-py$pyver")"
            printf '| %s | %s |' "${versions[0]/\?/$core}" "${versions[1]/\?/$pyver}"
            for step in "${STEPS[@]}"; do
                if [ -e "$OUT/$core/$step.result" ]; then
                    read -r -a result < "$OUT/$core/$step.result"
                    printf ' %s %ss |' "${result[0]}" "${result[1]}"
                    [ "${result[0]}" = pass ] || failed=1
                else
                    printf ' not run |'
                    failed=1
                fi
            done
            echo
        done < <(selected_cells)
    } > "$OUT/table.md"
    return "$failed"
}

show_failures() {
    local core pyver step
    while read -r core pyver; do
        for step in "${STEPS[@]}"; do
            if [ -e "$OUT/$core/$step.result" ] && ! grep -q '^pass' "$OUT/$core/$step.result"; then
                echo
                log "FAIL: ansible-core $core (Python $pyver), step $step; log $OUT/$core/$step.log, its end:"
                tail -n 40 "$OUT/$core/$step.log" >&2
            fi
        done
    done < <(selected_cells)
}

# --- main ------------------------------------------------------------------------------------

all_cells() { grep -v '^[[:space:]]*\(#\|$\)' "$ROOT/tests/matrix/cells.txt"; }

selected_cells() {
    local core pyver
    while read -r core pyver; do
        if [ "${#SELECTED[@]}" -eq 0 ] || [[ " ${SELECTED[*]} " == *" $core "* ]]; then
            echo "$core $pyver"
        fi
    done < <(all_cells)
}

main() {
    SELECTED=("$@")
    local core pyver running=0 start=$SECONDS
    for core in "${SELECTED[@]}"; do
        all_cells | grep -q "^$core " || die "no cell $core in tests/matrix/cells.txt (cells: $(all_cells | cut -d' ' -f1 | tr '\n' ' '))"
    done
    command -v virsh >/dev/null || die "virsh not found: run make setup"
    mkdir -p "$CACHE" "$OUT"
    log "cells: $(selected_cells | tr '\n' ',' | sed 's/,$//; s/,/, /g'); $JOBS at a time; venvs in $CACHE"

    while read -r core pyver; do
        if [ "$running" -ge "$JOBS" ]; then
            wait -n || true
            running=$((running - 1))
        fi
        run_cell "$core" "$pyver" &
        running=$((running + 1))
    done < <(selected_cells)
    wait || true

    local rc=0
    write_table || rc=1
    echo
    echo "make matrix: $((SECONDS - start)) s ($OUT/table.md)"
    cat "$OUT/table.md"
    if [ "$rc" -ne 0 ]; then
        show_failures
        die "some cells failed (table above, logs in ${OUT#"$ROOT"/}/)"
    fi
    log "every cell passed"
}

# One line, read before it runs: an edit of this file during a run cannot change what runs after it.
main "$@"; exit "$?"
