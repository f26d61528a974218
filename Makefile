# hostcpu.libvirt — set-up and tests. The Makefile is the install procedure: CI runs
# `bash .ci/run` (= `make test`) as root in a fresh clone on a fresh Debian machine.
#
#   make setup        system packages + .venv + libvirtd/virtlogd running, /dev/kvm usable
#   make test         setup, then every suite, the version matrix last (any failure fails)
#   make demo         setup, then playbooks/demo.yml against this machine
#   make bench        setup, then the benchmarks (bench/run.py, ~10 min; not part of make test)
#   make matrix       sanity, unit, ansible-doc and a smoke playbook on each ansible-core 2.17-2.21
# See DEVELOPERS.md.

SHELL       := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# Caches that survive a fresh clone (venvs of other Pythons, ...), one subdirectory per user.
HOSTCPU_CACHE ?= /var/cache/hostcpu-libvirt
export HOSTCPU_CACHE
VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
COLLECTIONS := $(CURDIR)/.collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/hostcpu/libvirt

# Only our checkout (through .collections) plus the collections bundled in the venv's `ansible`
# package (found on sys.path): nothing from ~/.ansible or /usr/share/ansible.
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# `import ansible_collections.hostcpu.libvirt...` for pytest and plain Python.
export PYTHONPATH := $(COLLECTIONS)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PATH := $(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# -rs: every skipped test is listed with its reason at the end.
PYTEST := $(PY) -m pytest -rs

.PHONY: help link venv system daemons setup sanity unit integration reliability accuracy fleet testdata demo test clean distclean molecule lint bench matrix

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))
	@echo '  targets: venv system daemons setup sanity unit integration reliability accuracy fleet molecule lint matrix testdata demo bench test clean'

# --- set-up ------------------------------------------------------------------------------

system:
	bash scripts/install-system.sh

daemons: system
	bash scripts/start-daemons.sh

# requirements.txt is installed only when it is newer than the stamp (a no-op otherwise);
# libvirt-python compiles against the system's libvirt, hence `system` first.
venv: system $(STAMP) link

$(STAMP): requirements.txt
	@if [ -d "$(VENV)" ] && ! "$(PY)" -c 'import sys' 2>/dev/null; then rm -rf "$(VENV)"; fi
	@[ -x "$(PY)" ] || { echo "creating $(VENV) with $$(command -v $(PYTHON)) ($$($(PYTHON) --version))"; $(PYTHON) -m venv "$(VENV)"; }
	$(PY) -m pip install --quiet --requirement requirements.txt
	$(PY) -m pip check
	@touch "$@"

# .collections/ansible_collections/hostcpu/libvirt -> this checkout (re-pointed if it moved).
link:
	@[ "$$(readlink "$(COLLECTION_LINK)" 2>/dev/null)" = "$(CURDIR)" ] || { \
	    mkdir -p "$(dir $(COLLECTION_LINK))" && ln -sfn "$(CURDIR)" "$(COLLECTION_LINK)" && \
	    echo "linked $(COLLECTION_LINK) -> $(CURDIR)"; }

setup: system venv daemons

# --- tests -------------------------------------------------------------------------------

sanity: venv
	bash scripts/sanity.sh

unit: venv testdata
	$(PYTEST) tests/unit

# Includes test_managed_pythons.py: the modules on managed-host Pythons 3.9-3.13 (pyenv), each in a
# venv cached under $(HOSTCPU_CACHE)/managed-python/ (about 6 minutes to build them all, 45 s warm).
integration: venv daemons
	$(PYTEST) tests/integration

# Bad input, faults and concurrency (tests/reliability, about 3 minutes), against a private
# libvirtd the suite starts, kills and restarts itself (never the daemon other suites use).
reliability: venv daemons
	$(PYTEST) tests/reliability

# live_cpu's predictions vs. guests started paused on this host (tests/accuracy, a few minutes)
# and vs. libvirt's own test data (tests/conformance); both print their match rate and fail below 100%.
accuracy: venv daemons testdata
	$(PYTEST) tests/accuracy tests/conformance

# Molecule scenario extensions/molecule/fleet: kvm and qemu of this machine as a two-host fleet,
# a guest with the fleet CPU started under each (about 2 minutes).
fleet: venv daemons
	molecule test -s fleet

# Every molecule scenario under extensions/molecule (the roles against the real libvirtd: default,
# lifecycle, fleet), each with its idempotence step and a cleanup that removes its guests.
molecule: venv daemons
	molecule test --all

# ansible-lint, production profile (.ansible-lint), on the roles, playbooks, molecule scenarios and the smoke playbook.
lint: venv
	ansible-lint roles playbooks extensions tests/smoke/playbook.yml

# Every supported ansible-core (tests/matrix/cells.txt: 2.17-2.19 on Python 3.11, 2.20-2.21 on 3.13),
# each in its own venv under $(HOSTCPU_CACHE)/matrix (rebuilt when its tests/matrix/requirements-*.txt
# changes): ansible-test sanity, unit tests, ansible-doc of every plugin, tests/smoke/playbook.yml on
# the real libvirtd. Two cells at a time; table in tests/output/matrix/table.md (scripts/matrix.sh).
# MATRIX_CELLS="2.19 2.21" runs only those; MATRIX_STEPS="venv unit" only those steps.
matrix: system daemons link testdata
	bash scripts/matrix.sh $(MATRIX_CELLS)

testdata: system
	bash scripts/fetch-testdata.sh

demo: setup
	ansible-playbook -i inventory/localhost.ini -e ansible_python_interpreter=$(PY) playbooks/demo.yml

# Benchmarks on the real libvirtd (bench/README.md): domain_cpu against virt-xml and community.libvirt,
# cpu_facts against its raw libvirt calls, live_cpu and fleet_baseline. Prints medians, ratios and the
# targets; writes bench/results/latest.{md,json}. Timing never goes into make test.
# BENCH_ARGS=--quick: a one-minute check that it runs; --update-readme: README's Performance section too.
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

# setup first, then every suite; make stops at the first failing one. pytest finding no test
# (exit 5) or no directory (exit 4) fails too: no suite is skipped silently.
test: setup
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory reliability
	$(MAKE) --no-print-directory accuracy
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory molecule
	$(MAKE) --no-print-directory matrix

# --- cleaning ----------------------------------------------------------------------------

# Keeps .cache (downloaded libvirt test data) and the system packages/daemons.
clean:
	rm -rf "$(VENV)" "$(COLLECTIONS)" tests/output .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .cache
