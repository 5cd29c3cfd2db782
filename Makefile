# Every step a fresh machine needs: Debian packages, the venv, the package (and its C build).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BS := $(VENV)/bin/blockstore
DEBS := fuse3 libfuse2 fio e2fsprogs qemu-utils qemu-system-common
DEMO_POOL := demo-pool

.PHONY: all deps venv demo test bench bench-quick clean

all: venv

deps: .stamp-debs
.stamp-debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing Debian packages:$$missing"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml $(wildcard setup.py native/*.c native/*.h native/*.py)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@touch $@

test: deps venv
	$(PY) -m pytest -q -p no:cacheprovider tests

demo: deps venv
	@rm -rf $(DEMO_POOL)
	$(BS) --pool $(DEMO_POOL) pool create --size 2G --extent-size 1M
	$(BS) --pool $(DEMO_POOL) lu create disk0 --size 1G
	head -c 64M /dev/urandom > $(DEMO_POOL).in
	$(BS) --pool $(DEMO_POOL) lu write disk0 --offset 0 < $(DEMO_POOL).in
	$(BS) --pool $(DEMO_POOL) lu snapshot disk0 s1
	$(BS) --pool $(DEMO_POOL) lu clone disk0@s1 disk1
	$(BS) --pool $(DEMO_POOL) lu read disk1 --offset 0 --length 64M | cmp - $(DEMO_POOL).in && echo "read back through a clone: identical"
	$(BS) --pool $(DEMO_POOL) lu list
	$(BS) --pool $(DEMO_POOL) pool status
	$(BS) --pool $(DEMO_POOL) pool check
	$(BS) bench --quick --json bench/results/demo.json
	@rm -f $(DEMO_POOL).in

bench: deps venv
	$(BS) bench --json bench/results/bench.json

bench-quick: deps venv
	$(BS) bench --quick --json bench/results/bench-quick.json

clean:
	rm -rf $(VENV) $(DEMO_POOL) $(DEMO_POOL).in .stamp-debs build *.egg-info
