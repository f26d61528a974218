# hostcpu.libvirt — set-up and tests. The Makefile is the install procedure: CI runs
# `bash .ci/run` (= `make test`) as root in a fresh clone on a fresh Debian machine.
#
#   make setup        system packages + .venv + libvirtd/virtlogd running, /dev/kvm usable
#   make test         setup, then every suite, the version matrix last (any failure fails)
#   make demo         setup, then playbooks/demo.yml against this machine
#   make bench        setup, then the benchmarks (bench/run.py, ~20 min; not part of make test)
#   make matrix       sanity, unit, ansible-doc and a smoke playbook on each ansible-core 2.17-2.21
#   make galaxy       release-check (build, galaxy-importer, install, smoke) + ee + docs; part of make test

#   make testbed      a mixed-version fleet: chroot hosts of other Debian releases (scripts/testbed)
#   make testbed-stop stop the testbed's daemons (its trees stay in $(HOSTCPU_CACHE)/testbed)
# See DEVELOPERS.md.

SHELL       := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
# Caches that survive a fresh clone (venvs of other Pythons, chroot trees, ...), one subdirectory per purpose.
HOSTCPU_CACHE ?= /var/cache/hostcpu-libvirt
export HOSTCPU_CACHE
VENV   := $(CURDIR)/.venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
COLLECTIONS := $(CURDIR)/.collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/hostcpu/libvirt
TESTBED_INVENTORY := $(HOSTCPU_CACHE)/testbed/inventory.ini

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

.PHONY: help link venv system daemons setup sanity unit integration reliability corpus accuracy fleet testdata demo test clean distclean molecule lint bench matrix release-venv release-check ee docs galaxy changelog testbed testbed-stop testbed-test testbed-fixtures testbed-molecule

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))
	@echo '  targets: venv system daemons setup sanity unit integration reliability corpus accuracy fleet molecule lint matrix testdata demo bench release-check ee docs galaxy changelog testbed testbed-stop testbed-test test clean'

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
# Includes domain_cpu over a sample of libvirt's own test domains (40 files of each version).
reliability: venv daemons testdata
	$(PYTEST) tests/reliability

# domain_cpu over every domain XML of libvirt 9.0's and 11.3's own tests (make testdata), in the
# private libvirtd: five steps, each in check mode, for real and again; counts per step and per
# cause in tests/output/corpus.md (tests/reliability/corpus.py says what is compared).
corpus: venv daemons testdata
	CORPUS_SAMPLE=0 $(PYTEST) -s tests/reliability/test_corpus.py

# live_cpu's predictions vs. guests started paused on this host (tests/accuracy, a few minutes)
# and vs. libvirt's own test data (tests/conformance); both print their match rate and fail below 100%.
accuracy: venv daemons testdata
	$(PYTEST) tests/accuracy tests/conformance

# Molecule scenario extensions/molecule/fleet: kvm and qemu of this machine as a two-host fleet,
# a guest with the fleet CPU started under each (about 2 minutes).
fleet: venv daemons
	molecule test -s fleet

# Every molecule scenario under extensions/molecule (the roles against the real libvirtd: default,
# lifecycle, fleet, testbed), each with its idempotence step and a cleanup that removes its guests.
# testbed runs against the hosts of `make testbed`, hence that prerequisite.
molecule: venv daemons testbed
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

# libvirt's own test data for tests/conformance: Debian's libvirt source packages of bookworm (9.0)
# and trixie (11.3), trimmed, in .cache/libvirt-src (TESTDATA_SUITES="bookworm" narrows; a no-op when there).
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

# --- release: Galaxy, execution environment, docs ------------------------------------------
# Their tools (galaxy-importer, ansible-builder, antsibull-docs, antsibull-changelog, Sphinx) live in
# a venv of tests/release/requirements.txt, and the install check's ansible-core in a venv of
# tests/release/install-requirements.txt, both under $(HOSTCPU_CACHE)/release/<name>-<hash>,
# built by scripts/release-venv.sh when missing and reused across clones while the file is unchanged.
RELEASE_VENV  := HOSTCPU_CACHE=$(HOSTCPU_CACHE) bash scripts/release-venv.sh
RELEASE_TOOLS := $(RELEASE_VENV) tools tests/release/requirements.txt
RELEASE_USER  := $(RELEASE_VENV) install tests/release/install-requirements.txt
# The smoke playbook the install check runs on the installed tarball (from branch matrix).
SMOKE_PLAYBOOK ?= $(CURDIR)/tests/smoke/playbook.yml
RELEASE_PYTEST = HOSTCPU_RELEASE_TOOLS=$$($(RELEASE_TOOLS)) HOSTCPU_RELEASE_INSTALL=$$($(RELEASE_USER)) \
	HOSTCPU_SMOKE_PLAYBOOK=$(SMOKE_PLAYBOOK) $(PYTEST)

release-venv: system
	$(RELEASE_TOOLS)
	$(RELEASE_USER)

# The tarball from this (dirty) checkout and from a copy full of caches packs only source files;
# versions agree with the released changelog; galaxy-importer (offline) on it finds nothing; a
# plain `ansible-galaxy collection install` into a fresh collections path with the install venv's
# ansible-core runs the smoke playbook on qemu:///system.
release-check: venv daemons
	$(RELEASE_PYTEST) tests/release/test_build.py tests/release/test_importer.py tests/release/test_install.py

# `ansible-builder create` with the built tarball: a complete build context whose own galaxy and
# introspection steps yield the collection's Python requirements and bindep entries.
ee: venv
	$(RELEASE_PYTEST) tests/release/test_ee.py

# The docs site (antsibull-docs + Sphinx, offline) in .cache/docs/site/build/html, 0 warnings,
# and lint-collection-docs at 0 errors.
docs: venv
	TOOLS=$$($(RELEASE_TOOLS)) bash scripts/docs.sh

# What make test runs: release-check and ee in one pytest session (one tarball), then docs.
galaxy: venv daemons
	$(RELEASE_PYTEST) tests/release
	TOOLS=$$($(RELEASE_TOOLS)) bash scripts/docs.sh

# After merging new fragments or plugins: fold them into the release galaxy.yml names (its date: today).
changelog: venv
	tools=$$($(RELEASE_TOOLS)) && PATH=$$tools/bin:$$PATH $$tools/bin/antsibull-changelog release --update-existing --reload-plugins

# --- the testbed: a mixed-version fleet on this machine (scripts/testbed/README.md) -------------

# Builds the missing chroot trees (in parallel), starts what does not run, writes and prints
# $(TESTBED_INVENTORY). A second run reuses the trees and leaves running hosts alone.
testbed: system daemons
	bash scripts/testbed/build.sh
	bash scripts/testbed/start.sh

# Stops every chroot host's guests and daemons; removes no tree, leaves no mount.
testbed-stop:
	bash scripts/testbed/stop.sh

# tests/testbed against the four hosts: Ansible over SSH, cpu_facts, paused guests, live
# migration between every neighbour, a libvirtd restart, and this machine left as it was.
# Also the accuracy matrix (tests/accuracy) on every host and virt type, predicted from each host's
# cpu_facts (about 17 of its minutes); figures in tests/output/accuracy-testbed.txt.
testbed-test: venv testbed
	TESTBED_INVENTORY=$(TESTBED_INVENTORY) $(PYTEST) tests/testbed

# Molecule scenario extensions/molecule/testbed alone: the host, guest and fleet roles over SSH
# against the four testbed hosts (extensions/molecule/testbed/README.md).
testbed-molecule: venv testbed
	molecule test -s testbed

# Re-records tests/unit/fixtures/versions/<libvirt>/ from every testbed host (commit the result).
testbed-fixtures: venv testbed
	$(PY) scripts/testbed/capture_fixtures.py --inventory $(TESTBED_INVENTORY)

# setup first, then every suite; make stops at the first failing one. pytest finding no test
# (exit 5) or no directory (exit 4) fails too: no suite is skipped silently. ansible-test sanity
# runs in the matrix, once per ansible-core (the development venv's 2.19 among them).
test: setup
	$(MAKE) --no-print-directory unit
	$(MAKE) --no-print-directory integration
	$(MAKE) --no-print-directory reliability
	$(MAKE) --no-print-directory accuracy
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory molecule
	$(MAKE) --no-print-directory galaxy
	$(MAKE) --no-print-directory matrix
	$(MAKE) --no-print-directory testbed-test

# --- cleaning ----------------------------------------------------------------------------

# Keeps .cache (downloaded libvirt test data) and the system packages/daemons.
clean:
	rm -rf "$(VENV)" "$(COLLECTIONS)" tests/output .pytest_cache .hypothesis
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf .cache
