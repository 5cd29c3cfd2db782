# Every step a fresh machine needs: Debian packages, the venv, the package (and its C build).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BS := $(VENV)/bin/blockstore
DEBS := fuse3 libfuse2 fio e2fsprogs qemu-utils qemu-system-common xxhash libxxhash-dev strace systemd groff-base nbdkit libnbd-bin \
        etcd-server etcd-client \
        python3-venv python3-dev gcc

# apt-get install the packages of $(1) that are missing (with sudo unless root)
install_debs = missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

.PHONY: all deps bench-deps venv demo test bench bench-quick clean

all: venv

deps: .stamp-debs
.stamp-debs:
	@$(call install_debs,$(DEBS))
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: .stamp-debs pyproject.toml $(wildcard setup.py native/*.c native/*.h native/*.py)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

test: deps venv
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=12 tests

demo: deps venv
	bash bench/demo.sh

# the db group's PostgreSQL (pgbench) and its FUSE floor's build (bench/floor), for the bench only
BENCH_DEBS := postgresql postgresql-contrib libfuse3-dev pkg-config gcc

bench-deps: .stamp-bench-debs
.stamp-bench-debs: .stamp-debs Makefile
	@$(call install_debs,$(BENCH_DEBS))
	@touch $@

bench: deps bench-deps venv
	$(BS) bench --save bench/results/bench.json

bench-quick: deps venv
	$(BS) bench --quick --save bench/results/bench-quick.json

clean:
	rm -rf $(VENV) demo-pool demo-mnt .stamp-debs .stamp-bench-debs build *.egg-info
